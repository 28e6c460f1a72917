"""Sweeps: the grid models x seeds x n_modalities, one RunSpec per cell, through one executor.

A sweep lives beside the records it produces::

    <results>/sweeps/<name>/manifest.json   the grid, each cell's protocol hash and run folder,
                                            every submission's executor and job ids, the log folder
    <results>/sweeps/<name>/logs/<job>/     submitit's stdout/stderr of each task
    <results>/sweeps/<name>/cells/<i>.json  what cell i's task last reported (running, failed: why, ...)

Cells that already have an ok record are skipped, so re-running a sweep (or
``sweep --resume``) only trains what is missing; every cell runs with ``resume=True`` and
continues from its checkpoint if an earlier attempt left one. ``status`` joins three views
of each cell: the scheduler's (pending / running), the run record (done / failed: reason)
and the task's own report (the error of a task that died before writing a record).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from filelock import FileLock

from shala_bench.errors import ProtocolError, RecordError, ShalaBenchError, close_matches
from shala_bench.executors import (Cell, Executor, Submission, cell_state_path, executor_for, read_cell_state)
from shala_bench.launch import RunSpec, prepare
from shala_bench.results import RECORD, atomic_write_text, now, read_record

SWEEPS = "sweeps"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
ACTIVE = ("pending", "running")


class SweepError(ShalaBenchError):
    """A sweep name or manifest that cannot be found or read, or a grid that cannot be expanded."""


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """'0-2,5' -> (0, 1, 2, 5): comma-separated integers and inclusive ranges, order kept, no repeats."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ProtocolError(f"--{what} {text}: range {part} is empty")
            values = range(lo, hi + 1)
        elif re.fullmatch(r"\d+", part):
            values = [int(part)]
        else:
            raise ProtocolError(f"--{what} {text}: expected integers and ranges like 0-2,5")
        out += [v for v in values if v not in out]
    return tuple(out)


# ---------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    dataset: str = "polymnist-synth"
    seeds: tuple[int, ...] = (0,)
    modalities: tuple[int, ...] = ()  # empty: the profile's own n_modalities
    profile: str = "quick"
    overrides: tuple[tuple[str, object], ...] = ()
    device: str = "auto"
    resume: bool = True  # continue from a checkpoint an earlier attempt left (a requeued task always does)
    inception_weights: str | None = None  # local Inception file for FID (not part of the protocol)
    loggers: tuple[str, ...] = ()  # training loggers besides curves.csv (`--log tensorboard`)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        d["loggers"] = list(self.loggers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(models=tuple(d["models"]), dataset=d["dataset"], seeds=tuple(d["seeds"]),
                   modalities=tuple(d.get("modalities", ())), profile=d["profile"],
                   overrides=tuple(d.get("overrides", {}).items()), device=d.get("device", "auto"),
                   resume=bool(d.get("resume", True)), inception_weights=d.get("inception_weights"),
                   loggers=tuple(d.get("loggers", ())))

    def specs(self, results: str | Path, cache_dir: str | None = None) -> list[RunSpec]:
        """One RunSpec per cell, in the order models x n_modalities x seeds."""
        if self.modalities and "n_modalities" in dict(self.overrides):
            raise ProtocolError("give the number of modalities with --modalities or --set n_modalities, not both")
        out = []
        for model in self.models:
            for M in self.modalities or (None,):
                extra = (("n_modalities", M),) if M is not None else ()
                for seed in self.seeds:
                    out.append(RunSpec(model=model, dataset=self.dataset, profile=self.profile, seed=seed,
                                       overrides=tuple(self.overrides) + extra, results=str(results), resume=self.resume,
                                       device=self.device, progress=False, cache_dir=cache_dir,
                                       inception_weights=self.inception_weights, loggers=self.loggers))
        return out


def check_models(models, registry=None) -> None:
    """Every name must be registered; the first unknown one is a one-line error listing the known ones."""
    from shala_bench.registry import get_registry

    reg = registry or get_registry()
    if not models:
        raise SweepError("--models: give at least one model" + close_matches("", reg.models))
    for name in models:
        reg.get_model(name)


def record_status(run_dir: Path) -> str | None:
    """'ok', 'failed: ...', 'unreadable: ...' or None where the cell has no record."""
    path = Path(run_dir) / RECORD
    if not path.exists():
        return None
    try:
        return read_record(path).status
    except RecordError as e:
        return f"unreadable: {e}"


# ---------------------------------------------------------------- the manifest
@dataclass
class Manifest:
    name: str
    dir: Path
    results: str
    grid: Grid
    cells: list[dict]  # index, model, seed, n_modalities, protocol_hash, run_dir (relative to results)
    submissions: list[Submission] = field(default_factory=list)
    created: str = ""
    cache_dir: str | None = None

    @property
    def path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def log_folder(self) -> Path:
        return self.dir / "logs"

    def run_dir(self, index: int) -> Path:
        return Path(self.results) / self.cells[index]["run_dir"]

    def spec(self, index: int) -> RunSpec:
        c = self.cells[index]
        g = self.grid
        extra = (("n_modalities", c["n_modalities"]),) if g.modalities else ()
        return RunSpec(model=c["model"], dataset=g.dataset, profile=g.profile, seed=c["seed"],
                       overrides=tuple(g.overrides) + extra, results=self.results, resume=g.resume, device=g.device,
                       progress=False, cache_dir=self.cache_dir, inception_weights=g.inception_weights,
                       loggers=g.loggers)

    def latest(self, index: int) -> Submission | None:
        """The last submission that included this cell."""
        for sub in reversed(self.submissions):
            if index in sub.cells:
                return sub
        return None

    def to_json(self) -> str:
        return json.dumps({"manifest_version": MANIFEST_VERSION, "name": self.name, "created": self.created,
                           "results": self.results, "cache_dir": self.cache_dir, "log_folder": str(self.log_folder),
                           "grid": self.grid.to_dict(), "cells": self.cells,
                           "submissions": [s.to_dict() for s in self.submissions]}, indent=1, sort_keys=True)

    def save(self) -> None:
        atomic_write_text(self.path, self.to_json() + "\n")

    def record_submission(self, sub: Submission) -> None:
        """Add a submission, or save its new job ids (the executor passes the same object again)."""
        with FileLock(str(self.path) + ".lock"):
            if not any(s is sub for s in self.submissions):
                self.submissions.append(sub)
            self.save()

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            d = json.loads(Path(path).read_text())
            return cls(name=d["name"], dir=Path(path).parent, results=d["results"], grid=Grid.from_dict(d["grid"]),
                       cells=d["cells"], submissions=[Submission.from_dict(s) for s in d.get("submissions", [])],
                       created=d.get("created", ""), cache_dir=d.get("cache_dir"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SweepError(f"cannot read sweep manifest {path}: {e}") from None


def sweeps_root(results: str | Path) -> Path:
    return Path(results) / SWEEPS


def list_sweeps(results: str | Path) -> list[Path]:
    """Manifests under <results>/sweeps, oldest first."""
    root = sweeps_root(results)
    paths = list(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    return sorted(paths, key=lambda p: (p.stat().st_mtime, p.parent.name))


def find_sweep(name_or_path: str | None, results: str | Path = "runs") -> Manifest:
    """A sweep by name (under <results>/sweeps), by folder or manifest path; None: the latest."""
    if name_or_path is None:
        known = list_sweeps(results)
        if not known:
            raise SweepError(f"no sweeps under {sweeps_root(results)} (start one with `shala-bench sweep`, or pass --results)")
        return Manifest.load(max(known, key=lambda p: (json.loads(p.read_text()).get("created", ""), p.stat().st_mtime)))
    path = Path(name_or_path)
    for candidate in (path, path / MANIFEST, sweeps_root(results) / name_or_path / MANIFEST):
        if candidate.is_file() and candidate.name == MANIFEST:
            return Manifest.load(candidate)
    names = [p.parent.name for p in list_sweeps(results)]
    raise SweepError(f"no sweep {name_or_path!r} under {sweeps_root(results)}" + (close_matches(name_or_path, names)
                                                                                 if names else ""))


def new_sweep_name(results: str | Path, prefix: str = "sweep") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name, n = f"{prefix}-{stamp}", 1
    while (sweeps_root(results) / name).exists():
        n += 1
        name = f"{prefix}-{stamp}-{n}"
    return name


# ---------------------------------------------------------------- launching
Say = Callable[[str], None]


def prebuild_datasets(specs: list[RunSpec], say: Say = print) -> None:
    """Build each distinct dataset cache once, here, before any task starts (they would wait on its lock)."""
    seen = set()
    for spec in specs:
        prep = prepare(spec)
        p = prep.protocol
        key = (spec.dataset, p.n_modalities, p.data_seed, p.n_train, p.n_val, p.n_test)
        if key in seen:
            continue
        seen.add(key)
        t0 = time.perf_counter()
        prep.dataset_entry.loader(p, spec.cache_dir)
        dt = time.perf_counter() - t0
        if dt > 1.0:
            say(f"dataset {spec.dataset} (M={p.n_modalities}) cached in {dt:.0f}s")


def create_sweep(grid: Grid, results: str | Path = "runs", name: str | None = None, registry=None) -> Manifest:
    """Validate the grid (names, protocols) and write the manifest of a new sweep; nothing runs yet."""
    from shala_bench.data.cache import default_cache_dir

    check_models(grid.models, registry)
    results = str(Path(results).absolute())
    cache_dir = str(default_cache_dir().absolute())
    specs = grid.specs(results, cache_dir)
    cells = []
    for i, spec in enumerate(specs):
        prep = prepare(spec, registry)  # raises on a bad dataset, profile, override or M
        cells.append({"index": i, "model": spec.model, "seed": spec.seed, "n_modalities": prep.protocol.n_modalities,
                      "protocol_hash": prep.protocol.hash,
                      "run_dir": str(prep.dir.relative_to(results))})
    name = name or new_sweep_name(results)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise SweepError(f"--name {name!r}: use letters, digits and . _ + -")
    folder = sweeps_root(results) / name
    if (folder / MANIFEST).exists():
        raise SweepError(f"sweep {name} exists already ({folder}); resume it with `sweep --resume {name}`")
    m = Manifest(name=name, dir=folder, results=results, grid=grid, cells=cells, created=now(), cache_dir=cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    m.save()
    return m


def cells_to_run(m: Manifest) -> tuple[list[int], list[int]]:
    """(indices without an ok record, indices with one)."""
    todo, done = [], []
    for c in m.cells:
        (done if record_status(m.run_dir(c["index"])) == "ok" else todo).append(c["index"])
    return todo, done


def label(m: Manifest, index: int) -> str:
    c = m.cells[index]
    return f"{c['model']} seed {c['seed']} M={c['n_modalities']}"


def launch(m: Manifest, executor: Executor, indices: list[int], prebuild: bool = True, say: Say = print) -> Submission | None:
    """Run (inline, local) or submit (slurm) the given cells of a sweep; the manifest records the jobs."""
    if not indices:
        return None
    specs = [m.spec(i) for i in indices]
    if prebuild:
        prebuild_datasets(specs, say)
    for i in indices:  # what earlier attempts reported no longer describes these cells
        cell_state_path(m.dir, i).unlink(missing_ok=True)
    cells = [Cell(index=i, spec=s, sweep_dir=str(m.dir)) for i, s in zip(indices, specs)]
    n, finished = len(cells), [0]

    def progress(cell: Cell, event: str, info: dict) -> None:
        if event == "started":
            say(f"  started   {label(m, cell.index)} (job {info.get('job')})")
        elif event == "deferred":
            say(f"  held back {label(m, cell.index)}: run {info.get('waits_for')} is training the {info.get('stage')} "
                "stage it shares; it starts again, and reuses that stage, once the stage is filed")
        else:
            finished[0] += 1
            tail = "ok" if info.get("status") == "ok" else f"FAILED: {info.get('error')}"
            log = f" (log: {info['log']})" if info.get("log") and info.get("status") != "ok" else ""
            say(f"[{finished[0]}/{n}] {label(m, cell.index)}: {tail}{log}")

    return executor.submit(cells, m.log_folder, on_update=m.record_submission, progress=progress)


# ---------------------------------------------------------------- status
@dataclass
class CellStatus:
    index: int
    model: str
    seed: int
    n_modalities: int
    state: str  # pending | running | done | failed | cancelled | not started
    job: str = ""
    detail: str = ""
    log: str = ""
    restarts: int = 0


def _log_tail(path: str | None) -> str:
    """The last line of a task's stderr that says something (an exception's last line, if any)."""
    if not path or not Path(path).exists():
        return ""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()[-200:] if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln)]
    return (errors or lines or [""])[-1][:300]


def progress_detail(run_dir: Path) -> str:
    """Where a running cell is, from its run's progress.json: 'vae 1200/2400, 4.1 steps/s, ~5 min left' or
    'evaluating'; empty before the first log interval."""
    from shala_bench.trainer import PROGRESS

    try:
        d = json.loads((Path(run_dir) / PROGRESS).read_text())
        if d.get("stage") == "eval":
            return f"evaluating {d['metric']} ({d['metric_index']}/{d['metrics']})" if "metric" in d else "evaluating"
        if d.get("stage") in ("done", "failed"):
            return d["stage"] + (f": {d['reason']}" if d.get("reason") else "")
        step, steps, rate = int(d["step"]), int(d["steps"]), d.get("steps_per_s")
        text = f"{d['stage']} {step}/{steps}"
        if int(d.get("stages", 1)) > 1:
            text += f" (stage {d['stage_index']} of {d['stages']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if rate:
        left = (steps - step) / float(rate)
        text += f", {float(rate):.1f} steps/s, ~{max(1, round(left / 60))} min left in it"
    return text


def _scheduler_view(m: Manifest) -> dict[int, str]:
    """Each cell's state as its latest submission's executor sees it."""
    from shala_bench.executors import _launcher_alive

    views: dict[int, dict[int, str]] = {}
    out = {}
    for c in m.cells:
        i = c["index"]
        sub = m.latest(i)
        if sub is None:
            out[i] = "unsubmitted"
            continue
        # local / inline: the launcher has not reached this cell (yet), or holds it back (LocalExecutor: a stage
        # it shares is being trained by another cell)
        if i not in sub.jobs or read_cell_state(m.dir, i).get("state") == "deferred":
            out[i] = "pending" if _launcher_alive(sub.launcher) else "never started"
            continue
        k = id(sub)
        if k not in views:
            try:
                views[k] = executor_for(sub).scheduler_states(sub)
            except ShalaBenchError:
                views[k] = {}
        out[i] = views[k].get(i, "unknown")
    return out


def sweep_status(m: Manifest) -> list[CellStatus]:
    """Every cell's state, from the scheduler, the run record and the task's own report, in that order."""
    sched = _scheduler_view(m)
    out = []
    for c in m.cells:
        i = c["index"]
        st = CellStatus(i, c["model"], c["seed"], c["n_modalities"], "pending")
        sub = m.latest(i)
        s = sched[i]
        if sub is not None:
            st.job = sub.jobs.get(i, "")
            st.log = executor_for(sub).log_path(sub, i) or ""
        rec = record_status(m.run_dir(i))
        cs = read_cell_state(m.dir, i)
        if s in ACTIVE:
            st.state = s
            if cs.get("state") == "requeued" or (s == "pending" and cs.get("state") == "running"):
                st.detail = "requeued after preemption; resumes from its checkpoint"
            elif cs.get("state") == "deferred":
                st.detail = f"held back until run {cs.get('waits_for')} has filed the {cs.get('stage')} stage it shares"
        elif rec == "ok":
            st.state = "done"
            if sub is None:
                st.detail = "ok before this sweep"
            try:
                st.restarts = read_record(m.run_dir(i) / RECORD).restarts
            except RecordError:
                pass
            if st.restarts:
                st.detail = f"{st.restarts} restart(s)"
        elif rec is not None and rec.startswith("failed"):
            st.state, st.detail = "failed", rec[len("failed: "):] if rec.startswith("failed: ") else rec
        elif rec is not None:  # unreadable record
            st.state, st.detail = "failed", rec
        elif cs.get("state") == "failed":
            st.state, st.detail = "failed", cs.get("error") or _log_tail(st.log)
        elif cs.get("state") == "cancelled" or s == "failed:CANCELLED":
            st.state, st.detail = "cancelled", "cancelled before it finished"
        elif s.startswith("failed:"):
            st.state, st.detail = "failed", f"{s[len('failed:'):]}: {_log_tail(st.log)}".rstrip(": ")
        elif s in ("unsubmitted", "never started"):
            st.state = "not started"
        elif cs.get("state") in ("running", "requeued"):
            if s == "finished":
                st.state, st.detail = "failed", f"task ended without a record: {_log_tail(st.log)}".rstrip(": ")
            else:
                st.state = "running"
        elif s == "finished":
            st.state, st.detail = "failed", f"task ended without a record: {_log_tail(st.log)}".rstrip(": ")
        else:
            st.state = "pending"  # submitted; the scheduler has not reported the job yet
        if st.state == "running" and not st.detail:
            st.detail = progress_detail(m.run_dir(i))
        out.append(st)
    return out


def status_table(rows: list[CellStatus], relative_to: Path | None = None) -> str:
    from tabulate import tabulate

    def short(p: str) -> str:
        if not p:
            return ""
        try:
            rel = os.path.relpath(p, relative_to or Path.cwd())
        except ValueError:
            return p
        return p if rel.startswith("..") else rel

    table = [[r.index, r.model, r.seed, r.n_modalities, r.state, r.job, r.detail, short(r.log) if r.state != "done" else ""]
             for r in rows]
    return tabulate(table, headers=["cell", "model", "seed", "M", "state", "job", "detail", "log"], tablefmt="simple")


def summary(rows: list[CellStatus]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.state] = out.get(r.state, 0) + 1
    return out


def wait(m: Manifest, poll_s: float = 2.0, timeout_s: float | None = None,
         on_change: Callable[[dict], None] | None = None) -> list[CellStatus]:
    """Poll until no cell is pending or running (slurm sweeps); returns the final status."""
    t0, last = time.time(), None
    while True:
        m = Manifest.load(m.path)
        rows = sweep_status(m)
        counts = summary(rows)
        if counts != last and on_change:
            on_change(counts)
        last = counts
        if not any(r.state in ACTIVE for r in rows):
            return rows
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise SweepError(f"sweep {m.name} still has {counts} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def active_cells(m: Manifest) -> list[int]:
    return [r.index for r in sweep_status(m) if r.state in ACTIVE]


def cancel(m: Manifest) -> list[str]:
    """Cancel every submission of the sweep that still has pending or running cells."""
    active = {r.index for r in sweep_status(m) if r.state in ACTIVE}
    done = []
    for sub in m.submissions:
        if any(m.latest(i) is sub for i in active if i in sub.cells):
            done.append(executor_for(sub).cancel(sub))
    return done
