"""Sweeps without a cluster: grid expansion, skipping ok cells, the local executor, status, preemption.

The SLURM path is tested against a real cluster in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest
import torch

from conftest import smoke_spec
from shala_bench import sweep as sw
from shala_bench.cli import main
from shala_bench.cluster import ClusterError, load_profile
from shala_bench.errors import ProtocolError
from shala_bench.executors import Cell, CellTask, LocalExecutor, read_cell_state
from shala_bench.launch import run_one
from shala_bench.results import read_record
from shala_bench.trainer import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "probe_n=32"]  # the smoke profile with a smaller latent-probe fit


# ---------------------------------------------------------------- the grid
def test_int_lists_take_ranges_and_reject_anything_else():
    assert sw.parse_int_list("0-2,5", "seeds") == (0, 1, 2, 5)
    assert sw.parse_int_list("2,3,5,8", "modalities") == (2, 3, 5, 8)
    assert sw.parse_int_list("3,1-3", "seeds") == (3, 1, 2)  # order kept, no repeats
    for bad in ("a", "2-1", "1,,2", "-1"):
        with pytest.raises(ProtocolError):
            sw.parse_int_list(bad, "seeds")


def test_grid_expands_models_by_modalities_by_seeds_into_cells_with_their_protocol_hashes(tmp_path):
    grid = sw.Grid(models=("mvae", "mopoe"), seeds=(0, 1, 2), modalities=(2, 5), profile="smoke")
    m = sw.create_sweep(grid, tmp_path / "runs", name="g")
    cells = [(c["model"], c["n_modalities"], c["seed"]) for c in m.cells]
    assert cells == [(mod, M, s) for mod in ("mvae", "mopoe") for M in (2, 5) for s in (0, 1, 2)]
    # one protocol per M, shared by every model and seed (so they can be ranked together)
    hashes = {(c["n_modalities"]): set() for c in m.cells}
    for c in m.cells:
        hashes[c["n_modalities"]].add(c["protocol_hash"])
    assert all(len(h) == 1 for h in hashes.values()) and hashes[2] != hashes[5]
    specs = [m.spec(i) for i in range(len(m.cells))]
    assert all(s.resume and not s.progress and s.profile == "smoke" for s in specs)
    assert [dict(s.overrides)["n_modalities"] for s in specs[:6]] == [2, 2, 2, 5, 5, 5]
    # run id: seed, M, recipe hash, and the hash of the model's own config (mvae's defaults under that recipe)
    from shala_bench.launch import resolve

    recipe, entry, _, cfg = resolve(specs[4])
    assert recipe.hash == m.cells[4]["protocol_hash"] and cfg.config == entry.resolve(recipe).config
    assert m.run_dir(4) == tmp_path / "runs" / "polymnist-synth" / "mvae" / (
        f"seed1-M5-{m.cells[4]['protocol_hash'][:12]}-{cfg.config.hash[:8]}")
    saved = json.loads(m.path.read_text())  # the manifest beside the records
    assert m.path == tmp_path / "runs" / "sweeps" / "g" / "manifest.json"
    assert saved["grid"]["models"] == ["mvae", "mopoe"] and saved["log_folder"] == str(m.log_folder)
    assert [c["protocol_hash"] for c in saved["cells"]] == [c["protocol_hash"] for c in m.cells]


def test_unknown_model_is_a_one_line_error_naming_the_known_ones(tmp_path, capsys):
    rc = main(["sweep", "--models", "mvae,mvea", "--profile", "smoke", "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "unknown model 'mvea'" in err and "did you mean mvae" in err and "known:" in err
    assert not (tmp_path / "sweeps").exists()  # nothing was created


def test_modalities_twice_and_out_of_range_are_errors(tmp_path, capsys):
    assert main(["sweep", "--models", "mvae", "--modalities", "2", "--set", "n_modalities=3",
                 "--results", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["sweep", "--models", "mvae", "--modalities", "1", "--profile", "smoke", "--results", str(tmp_path)]) == 2
    assert "n_modalities=1 not supported" in capsys.readouterr().err


# ---------------------------------------------------------------- cluster profiles
def render(profile, tmp_path) -> str:
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command="python -m task", folder=tmp_path, map_count=4, **profile.submitit_parameters())


def test_example_profile_renders_every_setting_into_the_sbatch_script(tmp_path):
    script = render(load_profile(str(REPO / "slurm" / "example.toml")), tmp_path)
    for flag in ("--partition=gpu", "--account=my-lab", "--qos=normal", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32GB", "--time=240", "--constraint='a100|h100'", "--array=0-3%4", "--signal=USR2@120",
                 "--mail-type=FAIL"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "module load cuda/12.1\nsource $HOME/venvs/shala-bench/bin/activate\n" in script


def test_test_cluster_profile_targets_the_debug_partition(tmp_path):
    p = load_profile("slurm/test-cluster" if Path("slurm/test-cluster.toml").exists() else
                     str(REPO / "slurm" / "test-cluster.toml"))
    script = render(p, tmp_path)
    assert "#SBATCH --partition=debug\n" in script and "#SBATCH --array=0-3%2\n" in script
    assert "--gpus-per-node" not in script and "--mem" not in script and p.timeout_min > 10


def test_profile_with_an_unknown_key_is_an_error_with_a_hint(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('partiton = "gpu"\n')
    with pytest.raises(ClusterError, match="unknown key 'partiton'.*did you mean partition"):
        load_profile(str(bad))
    with pytest.raises(ClusterError, match="no such profile"):
        load_profile(str(tmp_path / "missing.toml"))


# ---------------------------------------------------------------- running
def test_local_executor_runs_cells_on_two_workers_and_a_rerun_skips_the_ok_ones(tmp_path, capsys):
    results = tmp_path / "runs"
    args = ["sweep", "--models", "mvae", "--profile", "smoke", "--seeds", "0-1", "--modalities", "2",
            "--results", str(results), "--executor", "local", "--workers", "2"] + TINY
    assert main(args + ["--name", "first"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    started = [i for i, ln in enumerate(lines) if ln.strip().startswith("started")]
    finished = [i for i, ln in enumerate(lines) if ln.startswith("[")]
    assert len(started) == 2 and len(finished) == 2 and max(started) < min(finished)  # both ran at once
    m = sw.find_sweep("first", results)
    assert [r.state for r in sw.sweep_status(m)] == ["done", "done"]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for i in (0, 1):
        assert read_record(m.run_dir(i) / "record.json").ok
        state = read_cell_state(m.dir, i)
        assert state["state"] == "done" and state["threads"] == threads and state["pid"] != os.getpid()

    assert main(args + ["--name", "second"]) == 0  # the same grid again: nothing left to run
    out = capsys.readouterr().out
    assert "2 with an ok record already" in out and "nothing to run" in out
    assert [r.state for r in sw.sweep_status(sw.find_sweep("second", results))] == ["done", "done"]
    assert main(["status", "--results", str(results)]) == 0  # the latest sweep
    assert "ok before this sweep" in capsys.readouterr().out


@dataclass(frozen=True)
class Slot:
    """A cell as the executor needs it (index, threads), light enough that the task process skips torch."""

    index: int
    results: str
    sweep_dir: str
    threads: int | None = None
    defer_shared: bool = False


class WriteRecords:
    """A task that waits until all its siblings run, then writes its own record and a shared one 20 times."""

    def __call__(self, cell: Slot) -> dict:
        from shala_bench.results import RunRecord, write_record

        ready = Path(cell.sweep_dir) / "ready"
        ready.mkdir(exist_ok=True)
        (ready / str(cell.index)).touch()
        deadline = time.time() + 120
        while len(list(ready.iterdir())) < 16 and time.time() < deadline:
            time.sleep(0.05)
        seen = len(list(ready.iterdir()))
        (Path(cell.sweep_dir) / "seen").mkdir(exist_ok=True)
        (Path(cell.sweep_dir) / "seen" / str(cell.index)).write_text(json.dumps(seen))
        rec = RunRecord(run_id=f"seed{cell.index}-M2-x", model="mvae", dataset="d", seed=cell.index, n_modalities=2,
                        profile="smoke", protocol_hash="h", protocol={}, status="ok",
                        metrics={f"m{j}": float(cell.index) for j in range(2000)})
        write_record(rec, Path(cell.results) / "d" / "mvae" / rec.run_id)
        for _ in range(20):
            write_record(rec, Path(cell.results) / "shared")
        return {"status": "ok", "seen": seen}


def test_sixteen_concurrent_local_tasks_write_sixteen_intact_records(tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task process imports this file's class
    results = tmp_path / "runs"
    cells = [Slot(i, str(results), str(tmp_path)) for i in range(16)]
    outcomes = {}
    LocalExecutor(workers=16).submit(cells, tmp_path / "logs", task=WriteRecords(),
                                     progress=lambda c, ev, info: outcomes.__setitem__(c.index, info) if ev == "finished" else None)
    assert sorted(outcomes) == list(range(16)) and all(o["status"] == "ok" for o in outcomes.values())
    seen = sorted(json.loads(p.read_text()) for p in (tmp_path / "seen").iterdir())
    assert seen == [16] * 16  # every task wrote while all 16 were running
    records = sorted((results / "d" / "mvae").glob("*/record.json"))
    assert len(records) == 16
    for path in records:
        rec = read_record(path)
        assert path.parent.name == f"seed{rec.seed}-M2-x" and set(rec.metrics.values()) == {float(rec.seed)}
        assert len(rec.metrics) == 2000
    shared = read_record(results / "shared" / "record.json")  # written 320 times at once: one whole record
    assert len(set(shared.metrics.values())) == 1 and len(shared.metrics) == 2000
    assert not list(results.rglob(".record.json.tmp-*"))  # no temp file left behind


def test_failed_cell_is_reported_with_its_error_and_resume_reruns_only_it(tmp_path, capsys):
    results = tmp_path / "runs"
    args = ["sweep", "--models", "mvae", "--profile", "smoke", "--seeds", "0-1", "--modalities", "2",
            "--results", str(results), "--executor", "inline", "--name", "flaky"] + TINY
    from shala_bench.launch import prepare

    cell1 = sw.Grid(models=("mvae",), seeds=(0, 1), modalities=(2,), profile="smoke",
                    overrides=(("probe_n", 32),)).specs(results)[1]
    bad = prepare(cell1).dir / "checkpoint.pt"  # a corrupt checkpoint: cell 1 raises CheckpointError on resume
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    assert main(args) == 1
    m = sw.find_sweep("flaky", results)
    rows = sw.sweep_status(m)
    assert [r.state for r in rows] == ["done", "failed"]
    assert rows[1].detail.startswith("CheckpointError: cannot read checkpoint")
    capsys.readouterr()
    main(["status", "flaky", "--results", str(results)])
    assert "CheckpointError" in capsys.readouterr().out

    before = (m.run_dir(0) / "record.json").stat().st_mtime_ns
    bad.unlink()
    assert main(["sweep", "--resume", "flaky", "--results", str(results)]) == 0  # the executor it used: inline
    m = sw.find_sweep("flaky", results)
    assert [(s.executor, s.cells) for s in m.submissions] == [("inline", [0, 1]), ("inline", [1])]
    assert [r.state for r in sw.sweep_status(m)] == ["done", "done"]
    assert (m.run_dir(0) / "record.json").stat().st_mtime_ns == before


def test_preemption_signal_mid_training_checkpoints_at_a_step_boundary_and_the_resumed_task_matches(tmp_path, monkeypatch):
    """CellTask's handling of submitit's signal, in-process: defer to the end of the step, then hand over."""
    overrides = {"max_train_samples": 320, "checkpoint_every": 4, "batch_size": 8, "log_every": 4, "probe_n": 32}
    spec = smoke_spec("mvae", tmp_path / "preempted", overrides=overrides).with_(resume=False)
    cell = Cell(0, spec, sweep_dir=str(tmp_path / "sweep"))
    task = CellTask()
    handed_over = []

    def scheduler(signum, frame):  # what submitit does: checkpoint(), requeue, exit
        handed_over.append((signum, task.checkpoint(cell)))
        raise SystemExit(-1)

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    previous = signal.signal(signal.SIGUSR2, scheduler)
    ck_path = run_dir = None
    try:
        from shala_bench.launch import prepare

        run_dir = prepare(spec).dir
        ck_path = run_dir / "checkpoint.pt"

        def preempt():
            end = time.time() + 120
            while not ck_path.exists() and time.time() < end:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGUSR2)

        threading.Thread(target=preempt, daemon=True).start()
        with pytest.raises(SystemExit):
            task(cell)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert len(handed_over) == 1 and handed_over[0][0] == signal.SIGUSR2
    ck = load_checkpoint(ck_path)
    assert ck["state"]["stage"] == "vae" and 4 <= ck["state"]["step"] < 40 and ck["state"]["completed"] == []
    assert read_cell_state(cell.sweep_dir, 0)["state"] == "requeued"
    delayed = handed_over[0][1]
    resumed = delayed.args[0]
    assert isinstance(delayed.function, CellTask) and resumed.spec == spec.with_(resume=True)

    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    out = delayed.function(resumed)  # the requeued job
    rec = read_record(run_dir / "record.json")
    assert out["status"] == "ok" and rec.ok and rec.restarts == 1

    ref = run_one(smoke_spec("mvae", tmp_path / "reference", overrides=overrides))
    a, b = load_checkpoint(ck_path), load_checkpoint(tmp_path / "reference" / rec.dataset / "mvae" / rec.run_id / "checkpoint.pt")
    assert ref.restarts == 0 and a["state"]["step"] == b["state"]["step"] == 40
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


LAUNCHER = '''
import os, sys, time
from pathlib import Path
from shala_bench.executors import LocalExecutor
from test_sweep import Slot

class Sleep:
    def __call__(self, cell):
        Path(cell.sweep_dir, "task.pid").write_text(str(os.getpid()))
        time.sleep(300)
        return {"status": "ok"}

root = Path(sys.argv[1])
LocalExecutor(workers=1, poll_s=0.05).submit([Slot(0, str(root), str(root))], root / "logs", task=Sleep())
'''


def test_a_stopped_local_sweep_started_in_the_background_stops_its_tasks(tmp_path):
    # `nohup shala-bench sweep … &` starts the launcher with SIGINT ignored, the signal submitit cancels with
    import subprocess

    from shala_bench.processes import pid_alive

    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    tests = str(Path(__file__).parent)  # for `from test_sweep import Slot`, in the launcher and in its task
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    launcher = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    pid_file = tmp_path / "task.pid"
    deadline = time.time() + 90
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), "the task never started"
    task = int(pid_file.read_text())
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(60)
    deadline = time.time() + 30
    while pid_alive(task) and time.time() < deadline:
        time.sleep(0.2)
    alive = pid_alive(task)
    if alive:
        os.kill(task, signal.SIGKILL)
    assert not alive, "the task outlived its stopped sweep"


def test_a_stopped_local_sweep_checkpoints_its_running_cell_first(tmp_path):
    """`nohup shala-bench sweep … &`, stopped mid-training: the cell's checkpoint is written at the stop (here the
    periodic one never comes) and no task is left."""
    import subprocess

    from shala_bench.launch import prepare
    from shala_bench.processes import pid_alive
    from shala_bench.trainer import load_checkpoint

    results = tmp_path / "runs"
    sets = {"max_train_samples": 400_000, "checkpoint_every": 1_000_000, "batch_size": 8, "probe_n": 32}
    args = ["sweep", "--models", "mvae", "--profile", "smoke", "--seeds", "0", "--modalities", "2", "--results",
            str(results), "--executor", "local", "--workers", "1", "--threads", "1", "--name", "stopped"]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    launcher = subprocess.Popen([sys.executable, "-m", "shala_bench.cli", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    run_dir = prepare(smoke_spec("mvae", results, overrides={"n_modalities": 2, **sets})).dir
    deadline, step, progress = time.time() + 120, 0, run_dir / "progress.json"
    while step < 20 and time.time() < deadline and launcher.poll() is None:
        try:
            step = int(json.loads(progress.read_text()).get("step", 0))
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    assert step >= 20, "the cell never trained"
    assert not (run_dir / "checkpoint.pt").exists()  # no periodic checkpoint before the stop
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(120)
    state = read_cell_state(sw.find_sweep("stopped", results).dir, 0)
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    assert ck["state"]["stage"] == "vae" and int(ck["state"]["step"]) >= step
    assert state["state"] in ("cancelled", "requeued") and not pid_alive(int(state["pid"]))
