import json
import subprocess
import sys

import pytest

from conftest import copy_runs
from shala_bench.cli import main


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, needle", [
    (["run", "--model", "mvea", "--profile", "smoke"], "unknown model 'mvea' (did you mean mvae"),
    (["run", "--model", "mvae", "--dataset", "polymnist-synt"], "unknown dataset 'polymnist-synt'"),
    (["run", "--model", "mvae", "--set", "max_train_sample=3"], "--set max_train_sample: unknown recipe setting (did you mean max_train_samples"),
    (["run", "--model", "mvae", "--set", "max_train_samples=many"], "--set max_train_samples=many: expected int"),
    (["run", "--model", "mvae", "--set", "max_train_samples"], "expected key=value"),
    (["run", "--model", "mvae", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "--model", "mvae", "--set", "n_modalities=40"], "n_modalities=40 not supported"),
])
def test_bad_input_is_one_line_nonzero_and_no_record(argv, needle, tmp_path, capsys):
    code, out, err = _run(argv + ["--results", str(tmp_path)], capsys)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("record.json"))


def test_unreadable_checkpoint_is_one_line_and_no_record(mvae_smoke, tmp_path, capsys):
    args = ["run", "--model", "mvae", "--profile", "smoke", "--results", str(tmp_path), "--no-progress"]
    copy_runs(mvae_smoke(0)[0], tmp_path, seeds=(0,))  # what `args` ran (seed 0; the session's shared run)
    (rec,) = tmp_path.rglob("record.json")
    rec.unlink()
    (ck,) = tmp_path.rglob("checkpoint.pt")
    ck.write_bytes(b"not a checkpoint")
    code, out, err = _run(args + ["--resume"], capsys)
    assert code == 2 and "cannot read checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("record.json"))


def test_run_then_compare_prints_and_writes_markdown(mvae_smoke, tmp_path, capsys):
    runs, outs = mvae_smoke(0, 1)  # `run --model mvae --profile smoke --seed S` for S = 0, 1 (shared, copied here)
    for out in outs:
        assert "record:" in out
    copy_runs(runs, tmp_path / "runs")
    code, out, _ = _run(["compare", "--results", str(tmp_path / "runs"), "--out", str(tmp_path / "lb")], capsys)
    assert code == 0
    page = (tmp_path / "lb" / "polymnist-synth.md").read_text()
    rows = [line.split("|") for line in page.splitlines() if line.startswith("| mvae ")]
    assert any(cols[2].strip() == "2" for cols in rows)  # a table row: model, seeds = 2, ...
    assert "coherence_joint" in out


def test_help_of_every_subcommand_explains_itself(capsys):
    from shala_bench.cli import COMMANDS

    # One subprocess: the command line starts as users start it and prints the top-level help.
    top = subprocess.run([sys.executable, "-m", "shala_bench.cli", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "protocol" in top.stdout
    # Each subcommand's help through the same parser, in-process (one torch import, not one per subcommand).
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code in (0, None), name
        assert "usage: shala-bench " + name in capsys.readouterr().out, name


def test_list_shows_source_and_description(capsys):
    code, out, _ = _run(["list"], capsys)
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("mvae "))
    assert "shala-bench" in line and "Wu & Goodman" in line
    assert "polymnist-synth" in out and "coherence_joint" in out
