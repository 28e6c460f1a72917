"""`shala-bench reproduce RECORD`: the same code, seed and threads give the record's numbers back."""

from __future__ import annotations

from conftest import copy_runs
from shala_bench.cli import main


def test_reproduce_reports_zero_difference_and_the_seed_spread(mvae_smoke, tmp_path, capsys):
    # seeds 0 and 1 run with --threads 1 (the session's shared runs, copied here)
    runs = copy_runs(mvae_smoke(0, 1)[0], tmp_path / "runs")
    (rec,) = runs.rglob("seed0-*/record.json")
    before = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*"))
    capsys.readouterr()
    assert main(["reproduce", str(rec.parent), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 thread(s)" in out and "seed std (n=2)" in out
    row = next(line for line in out.splitlines() if line.startswith("| test_nll "))
    cols = [c.strip() for c in row.split("|")[1:-1]]
    assert cols[3] in ("+0", "-0") and cols[4] != "–" and float(cols[5]) == 0.0
    assert sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*")) == before  # the re-run went elsewhere


def test_reproduce_refuses_an_inconsistent_record(tmp_path, capsys):
    import json

    p = tmp_path / "record.json"
    p.write_text(json.dumps({"run_id": "x", "model": "mvae", "dataset": "polymnist-synth", "seed": 0, "n_modalities": 2,
                             "profile": "smoke", "protocol_hash": "0" * 64, "protocol": {"steps": 1}, "status": "ok"}))
    assert main(["reproduce", str(p)]) == 2
    err = capsys.readouterr().err
    assert "not the hash of its protocol" in err and len(err.strip().splitlines()) == 1
