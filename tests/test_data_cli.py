"""`shala-bench data prepare|info`, and `run` on a dataset that was never prepared."""

from __future__ import annotations

import pytest

from shala_bench.cli import main

from test_data_ntu120 import write_ntu
from test_data_polymnist import write_polymnist


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SHALA_BENCH_CACHE", str(path))
    return path


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prepare_converts_once_then_reuses(tmp_path, cache, capsys):
    root = write_polymnist(tmp_path / "pm")
    code, out, err = _run(["data", "prepare", "polymnist", "--root", str(root)], capsys)
    assert code == 0, err
    assert out.startswith("converted: polymnist")
    assert "reading PNGs" in err  # the tqdm progress bar goes to stderr
    assert f"source: {root.resolve()} (80 files" in out and "splits: train 12, test 4" in out
    code, out, err = _run(["data", "prepare", "polymnist", "--root", str(root), "--no-progress"], capsys)
    assert code == 0 and out.startswith("already prepared (cache reused): polymnist") and err == ""


def test_info_shows_modalities_shapes_splits_cache_and_source(tmp_path, cache, capsys):
    root = write_ntu(tmp_path / "ntu")
    assert _run(["data", "prepare", "ntu120", "--root", str(root), "--profile", "smoke", "--no-progress"], capsys)[0] == 0
    code, out, err = _run(["data", "info", "ntu120", "--profile", "smoke", "--set", "n_val=1"], capsys)
    assert code == 0, err
    for view in ("cam1", "cam2", "cam3"):
        assert f"{view:<10}  skeleton  16x25x3  float32  laplace" in out
    assert "splits: train 3, val 1, test 4" in out
    assert f"cache: {cache}" in out and "ntu120-" in out
    assert f"source: {root.resolve()} (24 files" in out and "converter v1" in out
    assert '"skipped_zero_bodies": 0' in out


def test_info_of_an_embedded_dataset_needs_no_prepare(cache, capsys):
    code, out, err = _run(["data", "info", "polymnist-synth", "--profile", "smoke"], capsys)
    assert code == 0, err
    assert "splits: train 256, val 32, test 64" in out and "3x28x28" in out
    code, out, err = _run(["data", "prepare", "polymnist-synth", "--root", "."], capsys)
    assert code == 2 and "needs no preparing" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["run", "--model", "mvae", "--dataset", "ntu120", "--profile", "smoke"],
    ["data", "info", "ntu120"],
])
def test_unprepared_dataset_says_exactly_which_command_to_run(argv, tmp_path, cache, capsys):
    code, out, err = _run(argv + (["--results", str(tmp_path / "runs")] if argv[0] == "run" else []), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "dataset ntu120 is not prepared: run `shala-bench data prepare ntu120 --root PATH`" in err
    assert "SsssCcccPpppRrrrAaaa.skeleton" in err
    assert not list(tmp_path.rglob("record.json"))


def test_prepare_errors_are_one_line(tmp_path, cache, capsys):
    code, out, err = _run(["data", "prepare", "ntu120", "--root", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "not a folder" in err and len(err.strip().splitlines()) == 1
    root = write_ntu(tmp_path / "ntu")
    (root / "S001C001P001R001A001.skeleton").write_text("12\n1\n")
    code, out, err = _run(["data", "prepare", "ntu120", "--root", str(root), "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "S001C001P001R001A001.skeleton: truncated at line 3: expected a body-info line in frame 1" in err
    code, out, err = _run(["data", "prepare", "ntuu120", "--root", str(root)], capsys)
    assert code == 2 and "unknown dataset 'ntuu120' (did you mean ntu120" in err
