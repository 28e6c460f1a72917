"""A shared stage being trained is claimed; a run that would train it at the same time is held back (the local
executor starts it again once the stage is filed, and it then reuses the stage) rather than training it twice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from conftest import smoke_spec
from shala_bench.executors import Cell, LocalExecutor
from shala_bench.launch import STAGE_CACHE, RunSpec, run_one
from shala_bench.trainer import PROGRESS, StageBusy, StageCache


@pytest.fixture
def other_process():
    """A live process that is not this one (its pid stands for another run's)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write_claim(cache: StageCache, key: str, pid: int, host: str | None = None) -> None:
    cache.folder.mkdir(parents=True, exist_ok=True)
    cache.claim_path(key).write_text(json.dumps({"run": "other-run", "host": host or socket.gethostname(),
                                                 "pid": pid, "started": "t"}))


def test_a_claim_is_live_while_its_process_runs(tmp_path, other_process):
    cache = StageCache(tmp_path)
    assert cache.claimant("k") is None  # no claim
    assert cache.claim("k", "mine") is None and cache.claimant("k") is None  # this process's own claim
    cache.release("k")
    assert not cache.claim_path("k").exists()
    _write_claim(cache, "k", other_process.pid)
    assert cache.claimant("k")["run"] == "other-run"
    assert cache.claim("k", "mine")["run"] == "other-run"  # refused: the other run keeps its claim
    cache.release("k")  # not ours: left alone
    assert cache.claimant("k")["run"] == "other-run"
    other_process.kill()
    other_process.wait()
    assert cache.claimant("k") is None  # its run ended mid-stage: a stale claim
    assert cache.claim("k", "mine") is None
    assert json.loads(cache.claim_path("k").read_text())["pid"] == os.getpid()


def test_a_claim_from_another_host_is_live_while_it_is_touched(tmp_path):
    cache = StageCache(tmp_path)
    _write_claim(cache, "k", 1, host="node-that-is-not-this-one")
    assert cache.claimant("k") is not None
    old = time.time() - cache.CLAIM_FRESH_S - 60
    os.utime(cache.claim_path("k"), (old, old))
    assert cache.claimant("k") is None
    cache.claim_path("k").write_text("not json")
    assert cache.claimant("k") is None


def test_a_deferring_run_waits_for_the_stage_and_then_reuses_it(tmp_path, other_process):
    first, second = tmp_path / "first", tmp_path / "second"
    run_one(smoke_spec("shala-post", first))
    entry, = (first / STAGE_CACHE).glob("*.pt")
    assert not list((first / STAGE_CACHE).glob("*.claim"))  # released once the stage was filed
    cache = StageCache(second / STAGE_CACHE)
    _write_claim(cache, entry.stem, other_process.pid)  # another run is training shala-post's stage 1 here now
    with pytest.raises(StageBusy, match="other-run"):
        run_one(smoke_spec("shala-cond", second, defer_shared_stages=True))
    run_dir, = (second / "polymnist-synth" / "shala-cond").iterdir()
    assert not (run_dir / "record.json").exists()
    assert json.loads((run_dir / PROGRESS).read_text())["stage"] == "deferred"
    # the other run files the stage and ends; the held-back run starts again and reuses it
    other_process.kill()
    other_process.wait()
    (second / STAGE_CACHE / entry.name).write_bytes(entry.read_bytes())
    cache.claim_path(entry.stem).unlink()
    rec = run_one(smoke_spec("shala-cond", second, defer_shared_stages=True))
    assert rec.ok and rec.stages["vae"]["reused_from"].startswith("seed0-")


def test_a_run_that_does_not_defer_trains_the_stage_alongside(tmp_path, other_process):
    first, second = tmp_path / "first", tmp_path / "second"
    run_one(smoke_spec("shala-post", first))
    entry, = (first / STAGE_CACHE).glob("*.pt")
    _write_claim(StageCache(second / STAGE_CACHE), entry.stem, other_process.pid)
    rec = run_one(smoke_spec("shala-post", second))  # `shala-bench run`, an array task: trains it too
    assert rec.ok and "reused_from" not in rec.stages["vae"]
    assert json.loads((second / STAGE_CACHE / f"{entry.stem}.claim").read_text())["run"] == "other-run"


class DeferOnce:
    """Cell 0 claims a stage (a live sleeper holds the claim for 3 s), cell 1 is deferred while it is live."""

    def __call__(self, cell: Cell) -> dict:
        cache = StageCache(Path(cell.sweep_dir) / "cache")
        log = Path(cell.sweep_dir) / "calls"
        with log.open("a") as f:
            f.write(f"{cell.index} {int(cell.defer_shared)}\n")
        if cell.index == 0:
            sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
            cache.folder.mkdir(parents=True, exist_ok=True)
            cache.claim_path("k").write_text(json.dumps({"run": "zero", "host": socket.gethostname(),
                                                         "pid": sleeper.pid}))
            sleeper.wait()
            return {"status": "ok"}
        deadline = time.time() + 60
        while not cache.claim_path("k").exists() and time.time() < deadline:
            time.sleep(0.05)  # cell 0 has started and claimed
        if cache.claimant("k") is not None:
            return {"status": "deferred", "waits_for": "zero", "stage": "vae", "claim": str(cache.claim_path("k"))}
        return {"status": "ok"}


def test_the_local_executor_holds_a_deferred_cell_back_until_the_claim_ends(tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task process imports this file's class
    events = []
    LocalExecutor(workers=2, poll_s=0.05).submit(
        [Cell(i, RunSpec(model="unused"), str(tmp_path)) for i in (0, 1)], tmp_path / "logs", task=DeferOnce(),
        progress=lambda c, ev, info: events.append((c.index, ev, info.get("status"))))
    calls = (tmp_path / "calls").read_text().split("\n")[:-1]
    assert sorted(calls[:2]) == ["0 1", "1 1"] and calls[2:] == ["1 1"]  # cell 1 ran twice, told to defer
    assert (1, "deferred", "deferred") in events
    # started again only once cell 0's claim had ended (else it would have been deferred again), then finished
    assert events.index((1, "deferred", "deferred")) < events.index((1, "finished", "ok"))
    assert sorted(e for e in events if e[1] == "finished") == [(0, "finished", "ok"), (1, "finished", "ok")]
