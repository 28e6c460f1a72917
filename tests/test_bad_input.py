"""Bad input: one line, exit 2, nothing written; checkpoint errors as whole sentences with the fix; progress.json
ends as done or failed; evaluation says which metric it is on; the summary line flags judges at chance."""

from __future__ import annotations

import json
import shutil

import pytest

from shala_bench.cli import main
from shala_bench.protocol import _FIXED, FIELDS, RANGES, make_protocol


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


SMOKE = ["run", "--model", "mvae", "--profile", "smoke", "--no-progress"]


@pytest.mark.parametrize("argv, needle", [
    (["--set", "beta=-1"], "beta must be >= 0, got -1.0"),
    (["--set", "fd_n=-5"], "fd_n must be >= 0, got -5"),
    (["--model", "shala", "--set", "shala.prior_max_samples=0"], "shala.prior_max_samples must be > 0, got 0"),
    (["--set", "eval_n=0"], "eval_n must be > 0"),
    (["--set", "data_seed=-1"], "data_seed must be >= 0"),
    (["--set", "lr=nan"], "lr must be > 0, got nan"),
    (["--dataset", "ntu120", "--set", "ntu120.split=xview"], "ntu120.split must be one of xsub, xset"),
    (["--dataset", "ucf101", "--set", "ucf101.split=4"], "ucf101.split must be one of 1, 2, 3"),
    (["--model", "shala", "--set", "shala.ddim_eta=2"], "shala.ddim_eta must be in [0, 1], got 2.0"),
    (["--model", "shala", "--set", "shala.sample_steps=500"], "shala.sample_steps=500 must be <= diffusion_T=50"),
    (["--model", "mopoe", "--set", "mopoe.bta=2"], "unknown setting mopoe.bta"),
    (["--set", "mopoe.beta=2"], "'mopoe' is another model's or dataset's settings"),
    (["--set", "prior_steps=0"], "not a shared recipe setting since protocol v2; it is the plugin's own setting "
                                 "shala.prior_max_samples"),
    (["--seed", "-1"], "--seed -1: a training seed must be >= 0"),
    (["--threads", "0"], "--threads 0: must be >= 1"),
])
def test_out_of_range_input_is_one_line_exit_2_and_nothing_written(argv, needle, tmp_path, capsys):
    code, out, err = _run(SMOKE + argv + ["--results", str(tmp_path / "runs")], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_every_protocol_field_has_a_range_and_every_profile_is_inside_them():
    from shala_bench.registry import get_registry

    assert set(RANGES) == set(FIELDS) - _FIXED
    reg = get_registry()
    for name in reg.datasets:
        entry = reg.get_dataset(name)
        for profile in entry.profiles:
            recipe = make_protocol(entry, profile)  # raises if a shipped profile is out of range
            for model in reg.models:  # and so does a model's own config (validated when resolved)
                reg.get_model(model).resolve(recipe)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run with fd_n = 0 and probe_n = 0, its progress lines and summary (shared: seconds)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("smoke")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--model", "mvae", "--profile", "smoke", "--results", str(root / "runs"),
                     "--set", "fd_n=0", "--set", "probe_n=0", "--threads", "1"])
    assert code == 0, err.getvalue()
    (rec,) = (root / "runs").rglob("record.json")
    return root, rec.parent, out.getvalue(), err.getvalue()


def test_an_evaluation_count_of_zero_records_why_the_metric_is_missing(smoke_run):
    _, run, _, _ = smoke_run
    rec = json.loads((run / "record.json").read_text())
    assert rec["status"] == "ok" and rec["hardware"]["torch_threads"] == 1
    assert rec["metrics"]["fd_unavailable"].startswith("fd_n = 0")
    assert rec["metrics"]["probe_unavailable"].startswith("probe_n = 0")
    assert "fd_mean" not in rec["metrics"] and "probe_all" not in rec["metrics"]


def test_progress_ends_done_and_evaluation_names_each_metric(smoke_run):
    _, run, out, err = smoke_run
    assert json.loads((run / "progress.json").read_text())["stage"] == "done"
    lines = [line for line in err.splitlines() if line.startswith("eval ")]
    n = int(lines[0].split("/")[1].split(":")[0])
    assert lines[0].startswith("eval 1/") and len(lines) == n >= 4 and any("coherence" in line for line in lines)
    assert "took" in lines[1]


def test_summary_line_warns_when_the_judges_are_at_chance(smoke_run):
    _, _, out, _ = smoke_run
    summary = out.splitlines()[0]
    assert "WARNING: judge classifiers below usable accuracy" in summary and "1 thread(s)" in summary


def test_progress_ends_failed_on_a_nan(tmp_path):
    from conftest import smoke_spec
    from shala_bench.launch import run_one

    rec = run_one(smoke_spec("mvae", tmp_path, overrides={"lr": 1e30, "max_train_samples": 192, "log_every": 1}))
    assert rec.status.startswith("failed: nan")
    (progress,) = tmp_path.rglob("progress.json")
    assert json.loads(progress.read_text())["stage"] == "failed"


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_a_corrupt_checkpoint_is_whole_sentences_with_the_fix(damage, smoke_run, tmp_path, capsys):
    root, run, _, _ = smoke_run
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    (ck,) = runs.rglob("checkpoint.pt")
    (rec,) = runs.rglob("record.json")
    rec.unlink()
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 64)
    args = ["run", "--model", "mvae", "--profile", "smoke", "--results", str(runs), "--no-progress",
            "--set", "fd_n=0", "--set", "probe_n=0", "--threads", "1"]
    code, _, err = _run(args + ["--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot read checkpoint" in err and err.strip().endswith("Delete it and rerun without --resume to train "
                                                                      "the run from the start.")
    assert "weights_only" not in err
    if damage == "random":
        return  # one fresh run is enough for what follows
    # without --resume: moved aside, never silently replaced, and the run trains from the start
    code, _, err = _run(args, capsys)
    assert code == 0 and "checkpoint.pt.corrupt" in err
    assert (ck.parent / "checkpoint.pt.corrupt").read_bytes() == data[: len(data) // 2]
    assert (ck.parent / "record.json").is_file()


@pytest.mark.parametrize("argv", [
    ["sweep", "--models", "mvae", "--profile", "smoke", "--threads", "0"],
    ["sweep", "--models", "mvae", "--profile", "smoke", "--set", "beta=-1"],
    ["run", "--model", "mvae", "--profile", "smoke", "--executor", "local", "--threads", "-2"],
])
def test_sweeps_refuse_bad_input_before_writing_anything(argv, tmp_path, capsys):
    code, _, err = _run(argv + ["--results", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
