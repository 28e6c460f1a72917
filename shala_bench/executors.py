"""Where cells run: inline (this process), local (worker processes) or slurm (one job array).

Every executor runs the same task, :class:`CellTask`, which calls ``launch.run_one`` on
one cell, so a cell behaves the same wherever it runs. The executors differ only in how
they start tasks and how they see them afterwards:

- ``inline``: one after the other in this process (what ``shala-bench run`` does by default).
- ``local``: submitit's LocalExecutor, at most ``workers`` task processes at a time, each
  with ``cores // workers`` torch threads; the launcher stays in the foreground.
- ``slurm``: submitit's SlurmExecutor; the whole grid is ONE job array (``map_array``),
  submitted and left to the scheduler. Settings come from a cluster profile (``cluster.py``).

Preemption: CellTask is a submitit ``Checkpointable``. On the scheduler's signal (USR2,
sent on preemption and ``signal_delay_s`` before the time limit) it asks the trainer to
stop at the end of the current step; the trainer writes its checkpoint (atomically) and
raises ``Preempted``; only then does the task hand over to submitit, which calls
``checkpoint()`` -- a resubmission of the same cell with ``resume=True`` -- and requeues
the job. The requeued task resumes from that checkpoint and draws exactly the batches and
noise the uninterrupted run would have, so it ends with the same parameters.

Each task reports its progress in ``<sweep>/cells/<index>.json`` (running / requeued / done
/ failed with the error's last line), which ``shala-bench status`` reads together with the
scheduler's view and the run records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import submitit
from submitit.core.utils import JobPaths

from shala_bench.cluster import ClusterError, ClusterProfile
from shala_bench.errors import ShalaBenchError
from shala_bench.executor_names import EXECUTORS
from shala_bench.launch import RunSpec
from shala_bench.processes import pid_alive
from shala_bench.results import atomic_write_text, now
from shala_bench.trainer import Callback, StageCache

CELLS = "cells"  # <sweep>/cells/<index>.json: what the task last said about itself
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # local tasks have no scheduler time limit worth the name


class SweepCancelled(ShalaBenchError):
    """The launcher was asked to stop (Ctrl-C or `shala-bench cancel`)."""


# ---------------------------------------------------------------- the task
@dataclass(frozen=True)
class Cell:
    """One grid cell as a task sees it."""

    index: int
    spec: RunSpec
    sweep_dir: str | None = None  # where the task reports its state; None for a lone inline run
    threads: int | None = None  # torch threads; None: the job's CPUs (SLURM_CPUS_PER_TASK) or torch's default
    # return "deferred" instead of training a shared stage another process is training (LocalExecutor holds the
    # cell back); off where a task cannot be held back (an array task, an inline run)
    defer_shared: bool = False


def cell_state_path(sweep_dir: str | Path, index: int) -> Path:
    return Path(sweep_dir) / CELLS / f"{index}.json"


def read_cell_state(sweep_dir: str | Path, index: int) -> dict:
    try:
        return json.loads(cell_state_path(sweep_dir, index).read_text())
    except (OSError, ValueError):
        return {}


def error_line(exc: BaseException) -> str:
    """`CheckpointError: cannot read ...`: the exception's type and its message's first line (as records say it)."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}"[:300] if msg else type(exc).__name__


def current_job_id() -> str:
    """The scheduler's id of this task (``A_i`` for an array task), or ``inline``."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        try:
            return submitit.JobEnvironment().job_id
        except Exception:  # not a submitit job after all
            pass
    return "inline"


def preemption_signal() -> int:
    # submitit's convention: USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a cgroup, taskset or SLURM allocation), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(workers: int = 1) -> int:
    """Torch threads per worker when --threads is not given: the usable CPUs that other processes are not already
    busy on (the 1-minute load average), divided among `workers`; at least 1.

    Why the load matters: an OpenMP thread that shares its core with a busy process stalls every parallel region of
    the other threads; on a 2-core machine with one core in use, 2 threads trained ~10-20x slower than 1. (With
    OMP_WAIT_POLICY=PASSIVE, which the CLI sets, the stall is far smaller but 2 threads stay slower than 1.)
    """
    cpus = usable_cpus()
    try:
        busy = min(cpus - 1, max(0, int(os.getloadavg()[0] + 0.5)))
    except OSError:
        busy = 0
    return max(1, (cpus - busy) // max(1, workers))


def set_threads(threads: int | None) -> int:
    import torch

    n = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


class CellTask(submitit.helpers.Checkpointable):
    """Train and evaluate one cell; preemption-safe under submitit (see the module docstring)."""

    def __init__(self) -> None:
        self._trainer = None
        self._in_fit = False
        self._deferred: int | None = None  # a preemption signal waiting for the end of the current step
        self._scheduler_handler: Callable | None = None  # submitit's: checkpoint() + requeue + exit

    def __call__(self, cell: Cell) -> dict:
        from shala_bench.launch import prepare, run_one
        from shala_bench.trainer import Preempted, StageBusy

        threads = set_threads(cell.threads)
        self._install_preemption_handler()
        job = current_job_id()
        self._report(cell, state="running", job=job, host=socket.gethostname(), pid=os.getpid(), threads=threads,
                     started=now(), resume=cell.spec.resume)
        try:
            record = run_one(cell.spec.with_(defer_shared_stages=cell.defer_shared), callbacks=[PreemptionCallback(self)])
        except StageBusy as e:  # another cell is training a stage this one shares: the launcher starts it later
            self._report(cell, state="deferred", job=job, waits_for=e.claim.get("run"), stage=e.stage)
            return {"status": "deferred", "record": None, "restarts": 0, "waits_for": e.claim.get("run"),
                    "stage": e.stage, "claim": str(e.claim_path)}
        except Preempted:
            self._report(cell, state="requeued", job=job)
            self._hand_over()  # submitit: checkpoint() -> requeue -> exit; returns only if it would not requeue
            raise
        except SystemExit:  # submitit's handler requeued the job (a signal outside training, or at its end)
            self._report(cell, state="requeued", job=job)
            raise
        except KeyboardInterrupt:
            self._report(cell, state="cancelled", job=job)
            raise
        except BaseException as e:
            self._report(cell, state="failed", job=job, error=error_line(e))
            raise
        finally:
            self._in_fit = False  # a fit that raised never reached on_fit_end
        path = prepare(cell.spec).dir / "record.json"
        self._report(cell, state="done" if record.ok else "failed", job=job, record=str(path),
                     error=None if record.ok else record.status, restarts=record.restarts)
        return {"status": record.status, "record": str(path), "restarts": record.restarts}

    def checkpoint(self, cell: Cell) -> submitit.helpers.DelayedSubmission:
        """What the requeued job runs: the same cell, resumed from the checkpoint written on the signal."""
        return submitit.helpers.DelayedSubmission(CellTask(), dataclasses.replace(cell, spec=cell.spec.with_(resume=True)))

    # ------------------------------------------------------------ preemption
    def _install_preemption_handler(self) -> None:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            return  # inline: no scheduler will signal us
        sig = preemption_signal()
        current = signal.getsignal(sig)
        if callable(current):
            self._scheduler_handler = current
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._in_fit and self._trainer is not None:
            # Mid-step state is not a consistent checkpoint: let the trainer finish this step,
            # write its checkpoint and raise Preempted (caught in __call__).
            st = self._trainer.state
            print(f"shala-bench: {name} during training ({st.stage} step {st.step}): checkpointing at the end of "
                  f"this step, then requeueing", flush=True)
            self._deferred = signum
            self._trainer.stop_requested = True
        elif self._scheduler_handler is not None:
            # Loading data or evaluating: the last checkpoint on disk is the state to resume from.
            print(f"shala-bench: {name} outside training: requeueing; the task resumes from its last checkpoint",
                  flush=True)
            self._scheduler_handler(signum, frame)

    def _hand_over(self) -> None:
        if self._scheduler_handler is not None and self._deferred is not None:
            signum, self._deferred = self._deferred, None
            self._scheduler_handler(signum, None)

    @staticmethod
    def _report(cell: Cell, **state) -> None:
        if cell.sweep_dir is None:
            return
        # merged into what this attempt reported before (its pid, threads, start time)
        before = read_cell_state(cell.sweep_dir, cell.index) if state.get("state") != "running" else {}
        state = {**before, "index": cell.index, "updated": now(), **state}
        atomic_write_text(cell_state_path(cell.sweep_dir, cell.index), json.dumps(state, indent=1, sort_keys=True) + "\n")


class PreemptionCallback(Callback):
    """The CellTask's view of the trainer: while it fits, a preemption signal sets `trainer.stop_requested`
    (the trainer checkpoints at the end of that step and raises Preempted); a signal during the last step is
    handed to submitit once fit has finished."""

    def __init__(self, task: CellTask):
        self.task = task

    def on_fit_start(self, trainer) -> None:
        self.task._trainer, self.task._in_fit = trainer, True

    def on_fit_end(self, trainer) -> None:
        self.task._in_fit = False
        if self.task._deferred is not None:  # the signal came during the last step: training is complete
            self.task._hand_over()


# ---------------------------------------------------------------- executors
@dataclass
class Submission:
    """What the manifest keeps about one launch of some cells."""

    executor: str
    cells: list[int]  # the cells this submission runs
    jobs: dict[int, str]  # cell index -> job id (local: once the cell's process has started)
    log_folder: str
    submitted: str
    array_id: str | None = None
    launcher: dict | None = None  # local: {"pid", "host"} of the foreground launcher
    cluster: dict | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["jobs"] = {str(k): v for k, v in self.jobs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Submission":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["jobs"] = {int(k): v for k, v in d.get("jobs", {}).items()}
        return cls(**d)


# (cell, event, info): "started" {job} | "finished" {status, error, log} | "deferred" {waits_for, stage, claim}
Progress = Callable[[Cell, str, dict], None]


class Executor(ABC):
    kind: str = ""
    blocking: bool = True  # True: submit() returns when every cell has finished

    @abstractmethod
    def submit(self, cells: Sequence[Cell], log_folder: Path, on_update: Callable[[Submission], None] | None = None,
               progress: Progress | None = None, task: Callable[[Cell], dict] | None = None) -> Submission:
        """Start the cells; the submission is passed to on_update whenever its job ids change.

        `task` (default: a CellTask) is what runs each cell; it must be picklable for local and slurm.
        """

    def scheduler_states(self, sub: Submission) -> dict[int, str]:
        """The scheduler's view of each cell: pending, running, finished or failed:<why>; absent when unknown."""
        return {}

    def cancel(self, sub: Submission) -> str:
        """Stop the cells of a submission that have not finished; returns what was done, in words."""
        return "nothing to cancel"

    def log_path(self, sub: Submission, index: int) -> str | None:
        job = sub.jobs.get(index)
        return str(JobPaths(Path(sub.log_folder) / "%j", job, 0).stderr) if job else None


class InlineExecutor(Executor):
    """Cells one after the other in this process; a failing cell does not stop the others."""

    kind = "inline"

    def __init__(self, threads: int | None = None):
        self.threads = threads  # None: torch's setting as it is

    def submit(self, cells, log_folder, on_update=None, progress=None, task=None):
        sub = Submission("inline", [c.index for c in cells], {}, str(log_folder), now(),
                         launcher={"pid": os.getpid(), "host": socket.gethostname()})
        for cell in (dataclasses.replace(c, threads=c.threads or self.threads) for c in cells):
            sub.jobs[cell.index] = "inline"
            if on_update:
                on_update(sub)
            if progress:
                progress(cell, "started", {"job": "inline"})
            try:
                out = (task or CellTask())(cell)
                info = {"status": out["status"], "error": None if out["status"] == "ok" else out["status"]}
            except ShalaBenchError as e:
                info = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            except Exception as e:
                info = {"status": "failed", "error": error_line(e)}
            if progress:
                progress(cell, "finished", info)
        return sub

    def scheduler_states(self, sub):
        # while this process runs, only the cells' own reports know more
        return {} if _launcher_alive(sub.launcher) else {i: "finished" for i in sub.jobs}

    def log_path(self, sub, index):
        return None


def _job_outcome(job, cell: Cell) -> dict:
    """status/error of a finished submitit job: its result, or the task's own report of its error."""
    try:
        out = job.result()
        if out["status"] == "deferred":
            return {**out, "error": None}
        return {"status": out["status"], "error": None if out["status"] == "ok" else out["status"]}
    except Exception as e:  # FailedJobError carries the task's traceback as text
        reported = read_cell_state(cell.sweep_dir, cell.index).get("error") if cell.sweep_dir else None
        lines = [ln for ln in str(e).splitlines() if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln)]
        return {"status": "failed", "error": (reported or (lines[-1] if lines else error_line(e)))[:300]}


class LocalExecutor(Executor):
    """At most `workers` task processes at once (submitit LocalExecutor), launched from the foreground.

    A cell whose shared stage (trainer.StageCache) another process is training is held back rather than trained
    twice: its task returns "deferred", and the cell goes to the end of the queue until that stage's claim is
    no longer live (the stage filed, or its run ended), or DEFER_RECHECK_S have passed; other cells run
    meanwhile. (Waiting costs no wall time: the held cell would have finished the stage no sooner itself.)"""

    kind = "local"
    DEFER_RECHECK_S = 600.0
    STOP_CHECKPOINT_S = 60.0  # a stopped sweep waits this long for its running tasks' checkpoints

    def __init__(self, workers: int | None = None, poll_s: float = 0.2, threads: int | None = None):
        cores = usable_cpus()
        self.workers = max(1, workers or cores)
        self.threads = threads or max(1, cores // self.workers)
        self.poll_s = poll_s

    def submit(self, cells, log_folder, on_update=None, progress=None, task=None):
        ex = submitit.LocalExecutor(folder=Path(log_folder) / "%j")
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, signal_delay_s=30)
        sub = Submission("local", [c.index for c in cells], {}, str(log_folder), now(),
                         launcher={"pid": os.getpid(), "host": socket.gethostname()})
        queue = [dataclasses.replace(c, threads=c.threads or self.threads, defer_shared=True) for c in cells]
        held: dict[int, tuple[str, float]] = {}  # deferred cell -> (the claim it waits on, when it was deferred)
        running: dict[int, tuple[Cell, object]] = {}

        def ready(cell: Cell) -> bool:
            if cell.index not in held:
                return True
            claim, since = held[cell.index]
            live = StageCache(Path(claim).parent).claimant(Path(claim).stem) is not None
            return not live or time.time() - since > self.DEFER_RECHECK_S

        def stop(signum, frame):
            raise SweepCancelled(f"local sweep stopped by signal {signal.Signals(signum).name}")

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            if on_update:
                on_update(sub)
            while queue or running:
                while len(running) < self.workers:
                    # the first queued cell that is not held back (each held cell's claim read once)
                    k = next((k for k, c in enumerate(queue) if ready(c)), None)
                    if k is None:
                        break
                    cell = queue.pop(k)
                    held.pop(cell.index, None)
                    with _interruptible_children():
                        job = ex.submit(task or CellTask(), cell)
                    running[cell.index] = (cell, job)
                    sub.jobs[cell.index] = str(job.job_id)
                    if on_update:
                        on_update(sub)
                    if progress:
                        progress(cell, "started", {"job": job.job_id})
                for index, (cell, job) in list(running.items()):
                    if job.done():
                        del running[index]
                        outcome = _job_outcome(job, cell)
                        if outcome["status"] == "deferred":
                            held[index] = (outcome["claim"], time.time())
                            queue.append(cell)
                            if progress:
                                progress(cell, "deferred", outcome)
                        elif progress:
                            progress(cell, "finished", {**outcome, "log": self.log_path(sub, index)})
                time.sleep(self.poll_s)
        except BaseException:
            _checkpoint_before_cancel([cell for cell, _ in running.values()], self.STOP_CHECKPOINT_S)
            for cell, job in running.values():
                job.cancel()  # SIGINT to the task's controller, which stops the task
            for cell, job in running.values():
                _wait_process(job, 10.0)
                state = read_cell_state(cell.sweep_dir, cell.index) if cell.sweep_dir else {}
                if cell.sweep_dir and state.get("state") in (None, "running"):
                    CellTask._report(cell, state="cancelled", job=str(job.job_id))
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            _tidy(log_folder)
        return sub

    def scheduler_states(self, sub):
        # a task's controller process outlives a crashed launcher, so ask about each job itself
        here = (sub.launcher or {}).get("host") == socket.gethostname()
        return {i: "running" if here and _is_local_job(int(j)) else "finished" for i, j in sub.jobs.items()}

    def cancel(self, sub):
        launcher = sub.launcher or {}
        if not _launcher_alive(launcher):
            return "the local launcher is not running (nothing to cancel)"
        os.kill(int(launcher["pid"]), signal.SIGTERM)  # it cancels its running tasks and exits
        return f"sent SIGTERM to the local launcher (pid {launcher['pid']})"


def _tidy(log_folder: Path) -> None:
    """submitit stages pickles in the un-substituted `%j` folder; drop it once it is empty."""
    try:
        (Path(log_folder) / "%j").rmdir()
    except OSError:
        pass


def _checkpoint_before_cancel(cells, timeout_s: float) -> None:
    """Before a stopped local sweep cancels its running tasks, send each the preemption signal, so a task in
    training writes its checkpoint at the end of its current step (CellTask._on_signal), and wait until each has
    said so (its cell state leaves "running", or another attempt took over), at most `timeout_s`. submitit's
    cancel alone (SIGINT, then SIGKILL a second later) would lose the steps since the last periodic checkpoint.
    The requeued attempt that the controller then starts is stopped by the cancel that follows."""
    waiting = {}
    for cell in cells:
        state = read_cell_state(cell.sweep_dir, cell.index) if cell.sweep_dir else {}
        pid = state.get("pid")
        if state.get("state") == "running" and isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            try:
                os.kill(pid, preemption_signal())
            except OSError:
                continue
            waiting[cell.index] = (cell, pid)
    end = time.time() + timeout_s
    while waiting and time.time() < end:
        for index, (cell, pid) in list(waiting.items()):
            state = read_cell_state(cell.sweep_dir, cell.index)
            if state.get("state") != "running" or state.get("pid") != pid or not pid_alive(pid):
                del waiting[index]
        time.sleep(0.1)


@contextlib.contextmanager
def _interruptible_children():
    """SIGINT at its default while a task's controller is started. A launcher started in the background of a
    shell (`nohup shala-bench sweep … &`) has SIGINT ignored, an ignored signal stays ignored across exec, and
    SIGINT is how submitit cancels a local job: its controller and task would then outlive a stopped sweep and
    train on. A handler (unlike SIG_IGN) is reset to the default in the child, so the child can be cancelled."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_process(job, timeout_s: float) -> None:
    end = time.time() + timeout_s
    while time.time() < end and not job.done():
        time.sleep(0.1)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_local_job(pid: int) -> bool:
    # guard against a recycled pid: a local job's controller runs submitit.local._local
    return pid_alive(pid) and "submitit" in _cmdline(pid)


def _launcher_alive(launcher: dict | None) -> bool:
    if not launcher or launcher.get("host") != socket.gethostname():
        return False
    pid = int(launcher["pid"])
    # guard against a recycled pid: the launcher is a Python process
    return pid_alive(pid) and ("python" in _cmdline(pid).lower() or "shala-bench" in _cmdline(pid))


# SLURM job states -> ours (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES)
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED",
            "STOPPED", "SPECIAL_EXIT", "SIGNALING", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}


def slurm_state(raw: str) -> str:
    s = raw.split()[0].upper() if raw else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
    if s in _PENDING:
        return "pending"
    if s in _RUNNING:
        return "running"
    if s == "COMPLETED":
        return "finished"
    if s == "UNKNOWN":
        return "unknown"
    return f"failed:{s}"


class SlurmExecutor(Executor):
    """The grid as one SLURM job array through submitit; returns as soon as it is queued."""

    kind = "slurm"
    blocking = False

    def __init__(self, profile: ClusterProfile | None = None, parallelism: int | None = None,
                 threads: int | None = None):
        self.threads = threads  # None: the profile's cpus_per_task
        profile = profile or ClusterProfile()
        if parallelism:
            profile = dataclasses.replace(profile, array_parallelism=parallelism)
        self.profile = profile

    @staticmethod
    def check_available() -> None:
        missing = [c for c in ("sbatch", "srun", "squeue", "scancel") if shutil.which(c) is None]
        if missing:
            raise ClusterError(f"--executor slurm: {', '.join(missing)} not found; run on a SLURM login node "
                               f"(or start a test cluster: ../shared/slurm/start-test-cluster.sh)")

    def submit(self, cells, log_folder, on_update=None, progress=None, task=None):
        self.check_available()
        ex = submitit.SlurmExecutor(folder=Path(log_folder) / "%j", max_num_timeout=self.profile.max_requeues)
        name = f"shala-{Path(log_folder).parent.name}"
        ex.update_parameters(job_name=name, **self.profile.submitit_parameters())
        cells = [dataclasses.replace(c, threads=c.threads or self.threads or self.profile.cpus_per_task) for c in cells]
        try:
            jobs = ex.map_array(task or CellTask(), cells)  # ONE sbatch --array for the whole grid
        except Exception as e:  # sbatch's own complaint (bad partition, account, ...) in one line
            msg = [ln for ln in str(e).splitlines() if ln.strip()]
            raise ClusterError(f"sbatch refused the array: {msg[-1] if msg else type(e).__name__}") from None
        _tidy(log_folder)
        ids = {c.index: str(j.job_id) for c, j in zip(cells, jobs)}
        array_id = str(jobs[0].job_id).split("_")[0] if jobs else None
        sub = Submission("slurm", [c.index for c in cells], ids, str(log_folder), now(), array_id=array_id,
                         cluster=self.profile.to_dict())
        if on_update:
            on_update(sub)
        return sub

    def scheduler_states(self, sub):
        ids = sorted({j.split("_")[0] for j in sub.jobs.values()})
        if not ids:
            return {}
        raw: dict[str, str] = {}
        # sacct knows finished jobs (when accounting is on); squeue is authoritative for live ones
        if shutil.which("sacct"):
            out = _run(["sacct", "-X", "-o", "JobID,State", "--parsable2", "-j", ",".join(ids)])
            if out:
                from submitit.slurm.slurm import SlurmInfoWatcher

                raw.update({k: v.get("State", "") for k, v in SlurmInfoWatcher().read_info(out).items()})
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)])
        for line in (out or "").splitlines():
            if "|" in line:
                jid, state = line.strip().split("|", 1)
                raw[jid] = state
        return {i: slurm_state(raw.get(j, "UNKNOWN")) for i, j in sub.jobs.items()}

    def cancel(self, sub):
        self.check_available()
        ids = sorted({j.split("_")[0] for j in sub.jobs.values()})
        if not ids:
            return "no jobs to cancel"
        res = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise ClusterError(f"scancel {' '.join(ids)} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
        return f"scancel {' '.join(ids)}"


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout


def make_executor(kind: str, workers: int | None = None, cluster: ClusterProfile | None = None,
                  threads: int | None = None) -> Executor:
    """`threads`: torch threads per task (--threads); None: inline, the CPUs not busy elsewhere (default_threads);
    local, the usable CPUs // workers; slurm, the profile's cpus_per_task."""
    if kind == "inline":
        return InlineExecutor(threads or default_threads(1))
    if kind == "local":
        return LocalExecutor(workers, threads=threads)
    if kind == "slurm":
        return SlurmExecutor(cluster, parallelism=workers, threads=threads)
    from shala_bench.errors import UnknownNameError, close_matches

    raise UnknownNameError(f"unknown executor {kind!r}" + close_matches(kind, EXECUTORS))


def executor_for(sub: Submission) -> Executor:
    """The executor that can see (and cancel) an earlier submission."""
    if sub.executor == "slurm":
        return SlurmExecutor(ClusterProfile.from_dict(sub.cluster or {}) if sub.cluster else None)
    return make_executor(sub.executor)
