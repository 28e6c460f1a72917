"""The trainer: runs a model's stages in order, each to its budget or a validation plateau, with
checkpoints, exact resume, NaN guards and callbacks.

Determinism: the batch of step s is a pure function of (seed, stage, s) — each epoch is a
seeded permutation — so a resumed run draws exactly the batches an uninterrupted one
would. The model's own noise comes from torch's global RNG, whose state is saved in every
checkpoint; validation runs in a forked RNG (shala_bench.validation), so it never shifts that
stream, and the early-stopping state is checkpointed too. The loss is checked for NaN/inf on
the device and read back only at log, evaluation and checkpoint steps, so the hot loop has no
per-step host sync.

Callbacks (`Callback`; shala_bench.callbacks has the curves, TensorBoard and progress-file ones)
are called at fixed points: on_fit_start, on_log, on_eval, on_stage_end, on_checkpoint, on_fit_end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shala_bench.contract import MultimodalVAE
from shala_bench.data.spec import Split, to_float
from shala_bench.errors import CheckpointError
from shala_bench.processes import pid_alive
from shala_bench.protocol import Protocol
from shala_bench.results import atomic_write_text, now
from shala_bench.validation import RECON

CHECKPOINT = "checkpoint.pt"  # the last state, for resume
BEST = "best.pt"  # the best weights by validation (the same format; the checkpoint a run evaluates)
PROGRESS = "progress.json"  # where a run is now, for `shala-bench status` on a sweep with no progress bars


def write_progress(run_dir: Path, **fields) -> None:
    """Overwrite <run_dir>/progress.json (atomically; the folder is made if needed) with the run's stage and step."""
    atomic_write_text(Path(run_dir) / PROGRESS, json.dumps({**fields, "updated": now()}, sort_keys=True) + "\n")


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, stage: str):
        super().__init__(f"nan at step {step}")
        self.step, self.stage = step, stage


class Preempted(RuntimeError):
    """Raised after a checkpoint was written because the scheduler asked the job to stop."""


class StageBusy(RuntimeError):
    """Raised, by a trainer asked to defer (`defer_shared`), before a shared stage that another live process is
    training now: the run is to be started again once that stage is filed, and then reuses it."""

    def __init__(self, stage: str, claim: dict, claim_path: Path):
        super().__init__(f"stage {stage} is being trained by run {claim.get('run')} (pid {claim.get('pid')} on "
                         f"{claim.get('host')}); this run reuses it once it is filed")
        self.stage, self.claim, self.claim_path = stage, claim, claim_path


@dataclass
class TrainState:
    completed: list[str] = field(default_factory=list)  # stages finished
    stage: str | None = None
    step: int = 0  # steps done in `stage`
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, wall time (validation included)
    restarts: int = 0
    val_seconds: dict[str, float] = field(default_factory=dict)  # per stage, the part spent validating
    early: dict = field(default_factory=dict)  # early stopping of `stage` (fresh_early_stopping)
    summaries: dict[str, dict] = field(default_factory=dict)  # per finished stage (Trainer._finish_stage)
    log_sums: dict[str, float] = field(default_factory=dict)  # loss terms summed since the last log row ...
    log_n: int = 0  # ... over this many steps (so a resumed run's first row averages what an uninterrupted one's does)
    # the (hook, row) callback calls of `stage` so far, kept so a shared stage can replay them (StageCache);
    # None when they are not all known (a checkpoint written before they were kept)
    stage_rows: list | None = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"completed": list(self.completed), "stage": self.stage, "step": self.step,
                "seconds": dict(self.seconds), "restarts": self.restarts, "val_seconds": dict(self.val_seconds),
                "early": dict(self.early), "summaries": {k: dict(v) for k, v in self.summaries.items()},
                "log_sums": dict(self.log_sums), "log_n": self.log_n,
                "stage_rows": None if self.stage_rows is None else [[h, dict(r)] for h, r in self.stage_rows]}

    @classmethod
    def from_dict(cls, s: dict, restarts: int) -> "TrainState":
        """A checkpoint's state (checkpoints written before early stopping lack its fields: empty)."""
        return cls(list(s["completed"]), s["stage"], int(s["step"]), dict(s["seconds"]), restarts,
                   dict(s.get("val_seconds", {})), dict(s.get("early", {})),
                   {k: dict(v) for k, v in s.get("summaries", {}).items()}, dict(s.get("log_sums", {})),
                   int(s.get("log_n", 0)),
                   None if s.get("stage_rows") is None else [(h, dict(r)) for h, r in s["stage_rows"]])


def fresh_early_stopping() -> dict:
    """Early-stopping state of a stage: evaluations so far, the best selection value (and its bound, the
    tie-break), the step it was reached at, and evaluations since; for a stage selected on its loss, the
    reconstruction accuracy of the best weights (validation.RECON; None when not measured)."""
    return {"evals": 0, "best": None, "best_tiebreak": None, "best_step": None, "since_best": 0,
            "best_content": None}


class Callback:
    """What the trainer calls back, at fixed points of `fit` (all no-ops here; subclass what you need).

    Order per step: on_log (a log step), on_eval (an evaluation step), then at a stage's end on_stage_end,
    then on_checkpoint (after a checkpoint is written). Rows are plain dicts of floats and names; the
    trainer is passed so a callback can read `trainer.state`, `trainer.run_dir`, `trainer.stage_steps` and
    set `trainer.stop_requested`. A resumed run repeats the calls made after its last checkpoint.
    """

    def on_fit_start(self, trainer: "Trainer") -> None:
        """After a checkpoint was restored (or not), before the first stage trains."""

    def on_log(self, trainer: "Trainer", row: dict) -> None:
        """Every log_every steps and at a stage's last step: stage, step, samples, the loss terms the model's
        `loss` logs (means over the steps since the last row), loss, lr, samples_per_s."""

    def on_eval(self, trainer: "Trainer", row: dict) -> None:
        """After each validation: stage, step, samples and the Validator's val_* values."""

    def on_checkpoint(self, trainer: "Trainer") -> None:
        """After checkpoint.pt was written (every checkpoint_every steps, at a stage's end, on a stop request)."""

    def on_stage_end(self, trainer: "Trainer", stage: str, summary: dict) -> None:
        """After a stage finished and the model holds the stage's best weights, before its checkpoint."""

    def on_fit_end(self, trainer: "Trainer") -> None:
        """After the last stage, when fit returns normally."""


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """The harness's one optimizer: Adam, as every model's reference uses (without amsgrad).

    `fused=True` runs the whole update as one kernel over all parameters instead of ~10 small
    ops per parameter tensor (the for-loop default on CPU, ~10 % of a batch-32 step at M = 5).
    It computes the same update; its state dict is the same, so older checkpoints resume.
    """
    return torch.optim.Adam(params, lr=lr, fused=True)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


RESTART_HINT = "Delete it and rerun without --resume to train the run from the start."


def load_checkpoint(path: Path, map_location="cpu", fix: str = RESTART_HINT) -> dict:
    """The checkpoint at `path`, loaded weights-only; CheckpointError (whole sentences, with `fix`) when it cannot
    be read. torch's own message is not repeated: for a corrupt file it advises loosening weights-only loading,
    which is never the fix here."""
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any unreadable file is the user's to fix, not a traceback
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}): the file is truncated, corrupt or "
                              f"not a shala-bench checkpoint. {fix}") from None
    if not isinstance(ck, dict) or not {"model", "state", "seed", "protocol_hash"} <= set(ck):
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a shala-bench checkpoint (no model, state, "
                              f"seed and protocol hash in it). {fix}")
    return ck


def state_mismatch(model: torch.nn.Module, weights: dict) -> str:
    """Why `weights` do not fit `model`, in a few words: counts of missing, unexpected and reshaped tensors."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    reshaped = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(getattr(weights[k], "shape", ())))
    parts = [f"{len(v)} {what} (first: {v[0]})" for v, what in ((missing, "missing"), (unexpected, "unexpected"),
                                                                 (reshaped, "of another shape")) if v]
    return "its tensors do not match: " + ", ".join(parts) if parts else "its tensors do not match"


def set_aside_corrupt(path: Path) -> Path | None:
    """A checkpoint that cannot be read, found where a new run will write its own: moved to <name>.corrupt
    (never silently replaced), with one warning line. Returns where it went, or None when it was readable."""
    import sys

    try:
        load_checkpoint(path)
        return None
    except CheckpointError:
        dest = path.with_name(path.name + ".corrupt")
        os.replace(path, dest)
        print(f"shala-bench: warning: checkpoint {path} cannot be read; moved it to {dest.name} and training from "
              "the start (pass --resume to continue from a readable checkpoint)", file=sys.stderr, flush=True)
        return dest


class BatchStream:
    """Seeded epoch permutations over an in-memory split; batch(s) depends only on (seed, stage, s)."""

    def __init__(self, split: Split, batch_size: int, seed: int, stage_index: int, device):
        self.split = split.to(device)
        self.n = len(split)
        self.bs = min(batch_size, self.n)
        self.per_epoch = self.n // self.bs
        self.seed, self.stage_index, self.device = seed, stage_index, device
        self._epoch, self._perm = -1, None

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.stage_index * 10_007 + epoch) % (2**63))
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._epoch = epoch
        idx = self._perm[pos * self.bs:(pos + 1) * self.bs]
        return {m: to_float(v[idx]) for m, v in self.split.data.items()}


class StageCache:
    """Finished shared stages, one file per key in a folder (a results folder's `stage-cache/`): what a run
    needs to skip a stage another run trained exactly as it would (MultimodalVAE.stage_share_key) — the stage's
    weights, the RNG state at its end, its summary, seconds and callback rows. Written atomically; an entry
    that cannot be read is a miss, and the stage trains.

    A run training a shared stage claims it (`<key>.claim`: its run, host and pid) until the stage is filed, so
    that a launcher can hold back a run that would train the same stage at the same time (Trainer
    `defer_shared`). Two runs that claim at the same instant both train it, as without claims."""

    # a claim written on another host (where its pid cannot be checked) is live while touched this recently;
    # its claimant touches it at every checkpoint
    CLAIM_FRESH_S = 1800.0

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def claim_path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def claimant(self, key: str) -> dict | None:
        """The live claim on `key` of another process (run, host, pid, started), or None: no claim, an
        unreadable one, or one whose process has ended (a run killed mid-stage leaves its claim behind)."""
        path = self.claim_path(key)
        try:
            claim, age = json.loads(path.read_text()), time.time() - path.stat().st_mtime
            pid = int(claim["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if claim.get("host") == socket.gethostname():
            live = pid != os.getpid() and pid_alive(pid)
        else:
            live = age < self.CLAIM_FRESH_S
        return claim if live else None

    def claim(self, key: str, run: str) -> dict | None:
        """Claim `key` for this process; the live claimant instead (and no claim) when another process has it."""
        other = self.claimant(key)
        if other is not None:
            return other
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.claim_path(key), json.dumps({"run": run, "host": socket.gethostname(),
                                                            "pid": os.getpid(), "started": now()}) + "\n")
        return None

    def _own(self, key: str) -> bool:
        try:
            claim = json.loads(self.claim_path(key).read_text())
        except (OSError, ValueError):
            return False
        return claim.get("host") == socket.gethostname() and claim.get("pid") == os.getpid()

    def touch(self, key: str) -> None:
        if self._own(key):
            os.utime(self.claim_path(key))

    def release(self, key: str) -> None:
        if self._own(key):
            self.claim_path(key).unlink(missing_ok=True)

    @staticmethod
    def key(**fields) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None
        need = {"run", "weights", "rng", "summary", "seconds", "val_seconds", "rows"}
        return entry if isinstance(entry, dict) and need <= set(entry) else None

    def put(self, key: str, entry: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(entry, self.path(key))


class Trainer:
    """Runs `model.stages` in order, each under `model.stage_budget(stage)`: at most max_samples training
    samples, validated every `eval_every` samples (rounded to whole steps) and at the stage's end by
    `validator` (shala_bench.validation.Validator; None or one without tuples: no validation, the last weights
    are the best), stopped after `patience` evaluations without an improvement (> min_delta for a coherence,
    > min_rel_delta of the best loss for a stage selected on its loss). The best
    weights go to best.pt (a full checkpoint, the one a run evaluates), the last state to checkpoint.pt
    (for resume); at a stage's end the model is restored to the stage's best weights."""

    def __init__(self, model: MultimodalVAE, protocol: Protocol, train: Split, run_dir: Path, seed: int,
                 device="cpu", progress: bool = True, callbacks=(), validator=None,
                 config_hash: str | None = None, stage_cache: Path | None = None, defer_shared: bool = False):
        self.model, self.protocol, self.train = model, protocol, train
        self.stage_cache = StageCache(stage_cache) if stage_cache is not None else None
        # a shared stage another live process is training: raise StageBusy (a launcher runs this again later)
        # instead of training the same stage alongside it
        self.defer_shared = defer_shared
        self._claimed: str | None = None  # the cache key of the shared stage this run is training, if any
        cfg = getattr(model, "config", None)
        self.config_hash = config_hash if config_hash is not None else (cfg.hash if cfg is not None else "")
        self.run_dir, self.seed, self.device = Path(run_dir), seed, torch.device(device)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.validator = validator
        self.state = TrainState()
        self.optimizer: torch.optim.Optimizer | None = None
        self.stop_requested = False  # set by a callback or a signal handler (preemption): checkpoint, then stop
        self.stage_index: int | None = None  # of the stage training now
        self.stage_steps: int = 0  # its step budget: max_samples // batch size
        self.batch_size = min(protocol.batch_size, len(train))

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST

    @property
    def samples_seen(self) -> int:
        """Training samples seen so far in this run, over all stages."""
        done = sum(int(self.state.summaries.get(s, {}).get("samples", 0)) for s in self.state.completed)
        return done + (self.state.step * self.batch_size if self.state.stage not in self.state.completed else 0)

    def _rng_state(self) -> dict:
        """The global RNG state the model's noise comes from (torch's, and the device's on CUDA)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _set_rng_state(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _checkpoint(self) -> dict:
        return {
            "protocol_hash": self.protocol.hash,
            "config_hash": self.config_hash,
            "seed": self.seed,
            "state": self.state.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "rng": self._rng_state(),
        }

    def save(self, *paths: Path) -> None:
        """Write the current state to `paths` (default: checkpoint.pt)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ck = self._checkpoint()
        for path in paths or (self.checkpoint_path,):
            atomic_torch_save(ck, path)
        if self._claimed is not None:
            self.stage_cache.touch(self._claimed)  # still training it: keeps a claim read from another host live

    def restore(self, path: Path | None = None) -> bool:
        path = Path(path or self.checkpoint_path)
        if not path.exists():
            return False
        ck = load_checkpoint(path)
        if (ck.get("protocol_hash") != self.protocol.hash or ck.get("seed") != self.seed
                or ck.get("config_hash", "") != self.config_hash):
            raise CheckpointError(f"checkpoint {path} was written by another recipe, model config or seed than this "
                                  "run's. "
                                  "Use a new results folder, or delete it and rerun without --resume.")
        try:
            self.model.load_state_dict(ck["model"])
        except (RuntimeError, KeyError, TypeError):
            raise CheckpointError(f"checkpoint {path} does not fit this model: {state_mismatch(self.model, ck['model'])}. "
                                  f"{RESTART_HINT}") from None
        self.state = TrainState.from_dict(ck["state"], int(ck["state"]["restarts"]) + 1)
        self._pending_optimizer = ck["optimizer"]
        self._set_rng_state(ck["rng"])
        return True

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _emit(self, hook: str, row: dict) -> None:
        """on_log / on_eval, the row also kept in the state for a shared stage's replay."""
        if self.state.stage_rows is not None:
            self.state.stage_rows.append((hook, dict(row)))
        self._call(hook, row)

    # ------------------------------------------------------------ shared stages
    def share_key(self, stage_index: int, stage: str) -> str | None:
        """The cache key of a stage the model says it shares (MultimodalVAE.stage_share_key), or None."""
        if self.stage_cache is None:
            return None
        key = self.model.stage_share_key(stage)
        if key is None:
            return None
        return StageCache.key(model_key=key, stage=stage, stage_index=stage_index, protocol=self.protocol.hash,
                              seed=self.seed, budget=self.model.stage_budget(stage).share_fields(),
                              batch_size=self.batch_size, device=self.device.type, torch=torch.__version__)

    def _reuse_stage(self, stage_index: int, stage: str) -> bool:
        """Take `stage` from the cache when another run finished it under the same key: its weights, the RNG
        state at its end, its summary and seconds, and a replay of its callback calls (curves, progress), so
        the run goes on exactly as if it had trained the stage itself. False when there is nothing to reuse."""
        key = self.share_key(stage_index, stage)
        entry = self.stage_cache.get(key) if key is not None else None
        if entry is None:
            return False
        own, names = self.model.state_dict(), self.model.stage_state_keys(stage)
        weights = entry["weights"]
        if set(weights) != set(names) or any(tuple(weights[n].shape) != tuple(own[n].shape) for n in names):
            return False  # the stage's networks changed shape since the entry was written: train it
        with torch.no_grad():
            for n in names:
                own[n].copy_(weights[n])
        self._set_rng_state(entry["rng"])
        summary = {**entry["summary"], "reused_from": entry["run"]}
        self.stage_index = stage_index
        self.stage_steps = max(1, self.model.stage_budget(stage).max_samples // self.batch_size)
        self.state.stage, self.state.step, self.state.stage_rows = stage, int(summary["steps"]), None
        for hook, row in entry["rows"]:
            self._call(hook, row)
        self.state.seconds[stage] = float(entry["seconds"])
        self.state.val_seconds[stage] = float(entry["val_seconds"])
        self.state.summaries[stage] = summary
        self.state.completed.append(stage)
        self.state.log_sums, self.state.log_n = {}, 0
        if self.progress:
            print(f"shala-bench: stage {stage} reused from run {entry['run']} (the same stage, seed and recipe; "
                  f"{summary['samples']} samples, {entry['seconds']:.0f} s when it trained)", file=sys.stderr, flush=True)
        self._call("on_stage_end", stage, summary)
        self.save(self.checkpoint_path, self.best_path)
        self._call("on_checkpoint")
        return True

    def _claim_stage(self, stage_index: int, stage: str) -> None:
        """Claim a shared stage before training it; when another live process is training it, StageBusy if this
        run defers, else a note (both train it)."""
        key = self.share_key(stage_index, stage)
        if key is None:
            return
        other = self.stage_cache.claim(key, self.run_dir.name)
        if other is None:
            self._claimed = key
        elif self.defer_shared:
            raise StageBusy(stage, other, self.stage_cache.claim_path(key))
        elif self.progress:
            print(f"shala-bench: stage {stage} is also being trained by run {other.get('run')} now; this run trains "
                  "it too (a sweep's local executor would have held this run back)", file=sys.stderr, flush=True)

    def _share_stage(self, stage_index: int, stage: str) -> None:
        """Put a finished stage in the cache, when the model shares it and all its callback rows are known."""
        key = self.share_key(stage_index, stage)
        if key is None or self.state.stage_rows is None:
            return
        own = self.model.state_dict()
        self.stage_cache.put(key, {
            "run": self.run_dir.name, "stage": stage, "seed": self.seed, "protocol_hash": self.protocol.hash,
            "weights": {n: own[n].detach().cpu().clone() for n in self.model.stage_state_keys(stage)},
            "rng": self._rng_state(), "summary": dict(self.state.summaries[stage]),
            "seconds": self.state.seconds.get(stage, 0.0), "val_seconds": self.state.val_seconds.get(stage, 0.0),
            "rows": [[h, r] for h, r in self.state.stage_rows]})

    # ------------------------------------------------------------ training
    def fit(self, resume: bool = False) -> TrainState:
        torch.manual_seed(self.seed)
        self._pending_optimizer = None
        if resume:
            self.restore()
        elif self.checkpoint_path.exists():
            set_aside_corrupt(self.checkpoint_path)
        self.model.to(self.device)
        self._call("on_fit_start")
        for i, stage in enumerate(self.model.stages):
            if stage in self.state.completed or self._reuse_stage(i, stage):
                continue
            self._claim_stage(i, stage)
            try:
                self._run_stage(i, stage)
            finally:  # filed, failed or preempted: nobody is training it now
                if self._claimed is not None:
                    self.stage_cache.release(self._claimed)
                    self._claimed = None
        self._call("on_fit_end")
        return self.state

    def _run_stage(self, stage_index: int, stage: str) -> None:
        p = self.protocol
        budget = self.model.stage_budget(stage)
        bs = self.batch_size
        steps = max(1, budget.max_samples // bs)
        eval_steps = max(1, round(p.eval_every / bs))
        validating = self.validator is not None and self.validator.enabled
        metric = self.validator.metric(budget.selection) if validating else None
        self.stage_index, self.stage_steps = stage_index, steps
        self.model.begin_stage(stage)
        self.optimizer = make_optimizer(self.model.stage_parameters(stage), budget.lr)
        start = 0
        if self.state.stage == stage and self._pending_optimizer:
            self.optimizer.load_state_dict(self._pending_optimizer)
            start = self.state.step
            self.state.early = self.state.early or fresh_early_stopping()  # older checkpoints have none
        else:
            self.state.early = fresh_early_stopping()
            self.state.stage_rows = []
        self._pending_optimizer = None
        self.state.stage, self.state.step = stage, start
        stream = BatchStream(self.train, p.batch_size, self.seed, stage_index, self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        params = [q for g in self.optimizer.param_groups for q in g["params"]]
        self.model.train()
        bar = tqdm(total=steps, initial=start, desc=f"{self.model.__class__.__name__}:{stage}", unit="step",
                   disable=not self.progress, dynamic_ncols=True, mininterval=1.0)
        t_stage = time.perf_counter()
        done_before = self.state.seconds.get(stage, 0.0)
        val_before = self.state.val_seconds.get(stage, 0.0)
        self._val_s = 0.0  # validation seconds of this segment
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=p.bf16)
        # protocol.compile (off by default, recorded): the model's loss through torch.compile
        loss_fn = torch.compile(self.model.loss) if p.compile else self.model.loss
        # loss terms summed on the device since the last log row (a resumed stage: what its checkpoint had summed)
        sums = {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in self.state.log_sums.items()}
        n_summed = self.state.log_n if start > 0 else 0
        if start == 0:
            sums = {}
        n_timed, t_log, val_at_log = 0, time.perf_counter(), 0.0
        flops_per_step = None
        warmup = budget.lr_warmup_samples > 0
        try:
            for step in range(start, steps):
                batch = stream.batch(step)
                if warmup and (step + 1) * bs <= budget.lr_warmup_samples + bs:
                    # from the step index alone, so a resumed stage goes on with the same rates
                    for group in self.optimizer.param_groups:
                        group["lr"] = budget.lr_at((step + 1) * bs)
                with autocast:
                    loss, logs = loss_fn(batch, stage)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
                self.optimizer.step()
                if flops_per_step is None:  # after the first step: lazily set state (ShaLa's z_scale) is set
                    flops_per_step = self._count_flops(batch, stage, autocast, params)
                bad = ~torch.isfinite(loss.detach())
                first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
                for k, v in {"loss": loss, **logs}.items():
                    v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                    sums[k] = sums[k] + v if k in sums else v
                n_summed += 1
                n_timed += 1
                self.state.step = step + 1
                last = step + 1 == steps
                is_log = (step + 1) % p.log_every == 0 or last
                is_eval = validating and ((step + 1) % eval_steps == 0 or last)
                if (is_log or is_eval) and int(first_bad) >= 0:  # the only host syncs: log and eval steps
                    raise NonFiniteLoss(int(first_bad), stage)
                if is_log:
                    means = (torch.stack(list(sums.values())) / n_summed).tolist()
                    now_t = time.perf_counter()
                    elapsed = now_t - t_log - (self._val_s - val_at_log)
                    row = {"stage": stage, "step": step + 1, "samples": self.samples_seen,
                           **{k: v for k, v in zip(sums, means) if k != "loss"}, "loss": means[list(sums).index("loss")],
                           "lr": self.optimizer.param_groups[0]["lr"],
                           "samples_per_s": round(n_timed * bs / elapsed, 3) if elapsed > 0 else None}
                    sums, n_summed, n_timed, t_log, val_at_log = {}, 0, 0, now_t, self._val_s
                    bar.set_postfix(loss=f"{row['loss']:.1f}", refresh=False)
                    self._emit("on_log", row)
                plateau = self._evaluate(stage, budget.selection, p) if is_eval else False
                bar.update(1)
                end = last or plateau
                if (step + 1) % p.checkpoint_every == 0 or end or self.stop_requested:
                    if int(first_bad) >= 0:
                        raise NonFiniteLoss(int(first_bad), stage)
                    self.state.seconds[stage] = done_before + time.perf_counter() - t_stage
                    self.state.val_seconds[stage] = val_before + self._val_s
                    self.state.log_sums, self.state.log_n = {k: float(v) for k, v in sums.items()}, n_summed
                    if end:
                        summary = self._finish_stage(stage, budget, metric, plateau, validating,
                                                     flops_per_step or 0.0)
                        self._call("on_stage_end", stage, summary)
                        self.save(self.checkpoint_path, self.best_path)
                        self._share_stage(stage_index, stage)
                    else:
                        self.save()
                    self._call("on_checkpoint")
                    if self.stop_requested and not end:
                        raise Preempted(f"stopped at {stage} step {step + 1} on request; checkpoint written")
                if end:
                    break
        finally:
            bar.close()
        self.model.eval()

    def _count_flops(self, batch, stage: str, autocast, params) -> float:
        """FLOPs of one training step (forward + backward of the stage's loss on a real batch), counted once per
        stage by torch's FlopCounterMode, in a forked RNG, without an optimizer step; buffers and gradients are
        put back, so training goes on exactly as without the count."""
        from torch.utils.flop_counter import FlopCounterMode

        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            with autocast:
                loss, _ = self.model.loss(batch, stage)
            loss.backward()
        with torch.no_grad():
            for n, b in self.model.named_buffers():
                b.copy_(buffers[n])
        for q in params:
            q.grad = None
        return float(counter.get_total_flops())

    def _evaluate(self, stage: str, selection: str, p: Protocol) -> bool:
        """Validate, keep the best weights in best.pt, call on_eval; True when the stage has plateaued."""
        t0 = time.perf_counter()
        vals = self.validator(self.model, selection)
        self._val_s += time.perf_counter() - t0
        e = self.state.early
        value, tiebreak = float(vals["val_selection"]), -float(vals["val_loss"])
        improved = math.isfinite(value) and (
            e["best"] is None or value > e["best"] + self._min_gain(selection, e["best"])
            or (value == e["best"] and math.isfinite(tiebreak) and tiebreak > e["best_tiebreak"]))
        e["evals"] += 1
        if improved:
            e.update(best=value, best_tiebreak=tiebreak, best_step=self.state.step, since_best=0,
                     best_content=vals.get(RECON))
            self.save(self.best_path)
        else:
            e["since_best"] += 1
        self._emit("on_eval", {"stage": stage, "step": self.state.step, "samples": self.samples_seen, **vals})
        return p.patience > 0 and e["since_best"] >= p.patience and not self._at_chance(selection)

    def _min_gain(self, selection: str, best: float) -> float:
        """The least rise over `best` that counts as an improvement: min_delta for a coherence, min_rel_delta
        of |best| for a stage that selects on its loss (its selection value is -loss, in nats)."""
        metric = getattr(self.validator, "metric", lambda s: "val_loss")(selection)
        p = self.protocol
        return p.min_rel_delta * abs(best) if metric == "val_loss" else p.min_delta

    def _at_chance(self, selection: str) -> bool:
        """Whether the stage's best weights have not left chance (validation.CHANCE_MARGIN): their validation
        coherence, or for a stage selected on its loss their reconstructions' accuracy; then a plateau neither
        stops the stage nor makes it converged."""
        e = self.state.early
        floor = getattr(self.validator, "floor", lambda s: None)(selection)
        if floor is not None:
            return e.get("best") is not None and e["best"] <= floor
        floor = getattr(self.validator, "content_floor", lambda s: None)(selection)
        # checkpoints written before the guard have no best_content: their stage goes on as it would have
        return floor is not None and e.get("best_content") is not None and e["best_content"] <= floor

    def _finish_stage(self, stage: str, budget, metric: str | None, plateau: bool, validating: bool,
                      flops_per_step: float) -> dict:
        """Restore the stage's best weights, mark it completed and record its summary."""
        e, steps_done = self.state.early, self.state.step
        if validating and e.get("best_step") is not None and e["best_step"] != steps_done:
            ck = load_checkpoint(self.best_path)
            if ck["state"]["stage"] != stage or int(ck["state"]["step"]) != e["best_step"]:
                raise CheckpointError(f"{self.best_path} holds {ck['state']['stage']} step {ck['state']['step']}, "
                                      f"not the best {stage} step {e['best_step']}. {RESTART_HINT}")
            self.model.load_state_dict(ck["model"])
        patience = self.protocol.patience
        converged = None if not validating or patience == 0 else (
            bool(plateau or e["since_best"] >= patience) and not self._at_chance(budget.selection))
        summary = {
            "converged": converged,
            "best_step": e["best_step"] if validating and e.get("best_step") is not None else steps_done,
            "steps": steps_done,
            "samples": steps_done * self.batch_size,
            "max_samples": budget.max_samples,
            "lr": budget.lr,
            **({"lr_warmup_samples": budget.lr_warmup_samples} if budget.lr_warmup_samples else {}),
            "batch_size": self.batch_size,
            "evaluations": e.get("evals", 0),
            "stop_reason": "plateau" if plateau else "budget",
            "selection": metric,
            "best_value": e.get("best"),
            "flops_per_step": flops_per_step,
            "train_flops": flops_per_step * steps_done,
            "seconds": round(self.state.seconds.get(stage, 0.0), 3),
            "val_seconds": round(self.state.val_seconds.get(stage, 0.0), 3),
        }
        self.state.summaries[stage] = summary
        self.state.completed.append(stage)
        return summary
