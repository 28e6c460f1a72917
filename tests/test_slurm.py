"""Sweeps on a REAL single-node SLURM cluster (slurmctld, slurmd, munge, slurmdbd + MariaDB).

The `slurm_cluster` fixture (tests/slurm_cluster.py) starts it with
../shared/slurm/start-test-cluster.sh; where the daemons cannot start, these tests (and
only these) skip with the reason. Array tasks run `python -m submitit.core._submit` with
this interpreter on this machine, so the package under test is the one they import.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from shala_bench import sweep as sw
from shala_bench.cli import main
from shala_bench.cluster import load_profile
from shala_bench.executors import SlurmExecutor
from shala_bench.results import read_record
from shala_bench.trainer import load_checkpoint
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm

# The smoke profile with the least evaluation that still writes an ok record (no probe, no Frechet distance, no
# validation, 16 coherence tuples): these tests are about the scheduler, and every task is a fresh interpreter.
TINY = (("probe_n", 0), ("fd_n", 0), ("eval_n", 16), ("joint_n", 16), ("val_n", 0))
TIMEOUT_S = 600


def quiet(_line: str) -> None:
    pass


def submit(profile: Path, results: Path, name: str, grid: sw.Grid, indices=None):
    m = sw.create_sweep(grid, results, name=name)
    sub = sw.launch(m, SlurmExecutor(load_profile(str(profile))), indices or list(range(len(m.cells))), say=quiet)
    return m, sub


def wait_for(predicate, timeout_s: float = TIMEOUT_S, poll_s: float = 0.1):
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"condition not met in {timeout_s}s")


def test_array_of_four_cells_with_one_failing_then_resume_reruns_only_the_failed_one(slurm_cluster, tmp_path, capsys):
    # one array of four cells (status, task ids, throttle) where cell 3 fails (a corrupt checkpoint raises
    # CheckpointError when it resumes), then `sweep --resume` reruns only that cell: one wave of the array
    # covers both properties (each task is a fresh interpreter, ~10 s of imports and work)
    results = tmp_path / "runs"
    grid = sw.Grid(models=("mvae",), seeds=(0, 1), modalities=(2, 3), profile="smoke", overrides=TINY)
    m = sw.create_sweep(grid, results, name="array4")
    bad = m.run_dir(3) / "checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    sub = sw.launch(m, SlurmExecutor(load_profile(str(slurm_cluster))), [0, 1, 2, 3], say=quiet)

    # ONE job array: every cell is a task of the same job, at most 2 at once (the profile)
    A = sub.array_id
    assert sorted(sub.jobs.values()) == [f"{A}_{i}" for i in range(4)]
    script = next(m.log_folder.rglob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --partition=debug" in script

    rows = sw.wait(m, poll_s=1.0, timeout_s=TIMEOUT_S)
    assert [r.state for r in rows] == ["done", "done", "done", "failed"], sw.status_table(rows)
    assert rows[3].detail.startswith("CheckpointError: cannot read checkpoint")
    assert Path(rows[3].log).is_file() and "CheckpointError" in Path(rows[3].log).read_text()
    records = [read_record(m.run_dir(i) / "record.json") for i in range(3)]
    assert all(r.ok for r in records)
    assert [(r.seed, r.n_modalities) for r in records] == [(0, 2), (1, 2), (0, 3)]
    assert {r.hardware["slurm_array_job_id"] for r in records} == {A}
    assert sorted(r.hardware["slurm_array_task_id"] for r in records) == ["0", "1", "2"]
    capsys.readouterr()
    assert main(["status", "array4", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "CheckpointError: cannot read checkpoint" in out and out.strip().endswith("3 done, 1 failed")

    before = [(m.run_dir(i) / "record.json").stat().st_mtime_ns for i in range(3)]
    bad.unlink()  # the cause is fixed
    assert main(["sweep", "--resume", "array4", "--results", str(results), "--wait"]) == 0
    m = sw.Manifest.load(m.path)
    assert [(s.executor, s.cells) for s in m.submissions] == [("slurm", [0, 1, 2, 3]), ("slurm", [3])]
    assert [(m.run_dir(i) / "record.json").stat().st_mtime_ns for i in range(3)] == before  # not rerun
    rerun = read_record(m.run_dir(3) / "record.json")
    assert rerun.ok and (rerun.seed, rerun.n_modalities) == (1, 3)
    B = rerun.hardware["slurm_job_id"]  # a one-cell resubmission is a plain job (submitit), not an array
    assert B != A and "slurm_array_job_id" not in rerun.hardware

    capsys.readouterr()
    assert main(["status", "array4", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.strip().split()[:1] in (["0"], ["1"], ["2"], ["3"])]
    assert [(ln[1], ln[2], ln[3], ln[4], ln[5]) for ln in lines] == [
        ("mvae", "0", "2", "done", f"{A}_0"), ("mvae", "1", "2", "done", f"{A}_1"),
        ("mvae", "0", "3", "done", f"{A}_2"), ("mvae", "1", "3", "done", B)]
    assert out.strip().endswith("4 done")


def test_preempted_task_resumes_from_its_checkpoint_and_ends_with_the_uninterrupted_parameters(slurm_cluster, tmp_path):
    # slow enough that USR2 lands mid-training: 120 small steps, a checkpoint every 4
    slow = TINY + (("max_train_samples", 960), ("checkpoint_every", 4), ("batch_size", 8), ("log_every", 4))
    grid = sw.Grid(models=("mvae",), seeds=(3,), profile="smoke", overrides=slow)
    m, sub = submit(slurm_cluster, tmp_path / "preempted", "preempted", grid)
    ref, _ = submit(slurm_cluster, tmp_path / "reference", "reference", grid)  # runs alongside, untouched

    ck_path = m.run_dir(0) / "checkpoint.pt"
    wait_for(ck_path.exists)  # training has begun
    subprocess.run(["scancel", "--signal=USR2", sub.jobs[0]], check=True, timeout=60)

    for sweep in (m, ref):
        rows = sw.wait(sweep, poll_s=1.0, timeout_s=TIMEOUT_S)
        assert rows[0].state == "done", sw.status_table(rows)
    log = next(m.log_folder.rglob("*_log.out")).read_text()
    assert "SIGUSR2 during training (vae step" in log  # the signal did land mid-run
    assert "Requeued job" in log
    preempted, reference = (read_record(s.run_dir(0) / "record.json") for s in (m, ref))
    assert preempted.ok and reference.ok
    assert (preempted.restarts, reference.restarts) == (1, 0)

    a, b = load_checkpoint(ck_path), load_checkpoint(ref.run_dir(0) / "checkpoint.pt")
    assert a["state"]["step"] == b["state"]["step"] == 120 and a["state"]["completed"] == ["vae"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_cancel_stops_the_array_and_status_says_cancelled(slurm_cluster, tmp_path, capsys):
    results = tmp_path / "runs"
    endless = TINY + (("max_train_samples", 3_200_000), ("checkpoint_every", 1000))
    grid = sw.Grid(models=("mvae",), seeds=(0, 1, 2), profile="smoke", overrides=endless)
    m, sub = submit(slurm_cluster, results, "doomed", grid)
    wait_for(lambda: any(r.state == "running" for r in sw.sweep_status(m)), poll_s=0.5)

    assert main(["cancel", "doomed", "--results", str(results)]) == 0
    assert f"scancel {sub.array_id}" in capsys.readouterr().out
    rows = sw.wait(m, poll_s=1.0, timeout_s=120)
    assert [r.state for r in rows] == ["cancelled"] * 3, sw.status_table(rows)
