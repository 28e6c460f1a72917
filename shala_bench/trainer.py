"""The trainer: runs a model's stages in order, with checkpoints, exact resume and NaN guards.

Determinism: the batch of step s is a pure function of (seed, stage, s) — each epoch is a
seeded permutation — so a resumed run draws exactly the batches an uninterrupted one
would. The model's own noise comes from torch's global RNG, whose state is saved in every
checkpoint. The loss is checked for NaN/inf on the device and read back only at log and
checkpoint steps, so the hot loop has no per-step host sync.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shala_bench.contract import MultimodalVAE
from shala_bench.data.spec import Split, to_float
from shala_bench.errors import CheckpointError
from shala_bench.protocol import Protocol
from shala_bench.results import atomic_write_text, now

CHECKPOINT = "checkpoint.pt"
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


@dataclass
class TrainState:
    completed: list[str] = field(default_factory=list)  # stages finished
    stage: str | None = None
    step: int = 0  # steps done in `stage`
    seconds: dict[str, float] = field(default_factory=dict)
    restarts: int = 0


def stage_budget(protocol: Protocol, stage: str, config=None) -> tuple[int, float]:
    """(optimizer steps, learning rate) of a stage: the recipe's for a model's first stage, the model config's
    `<stage>_steps` / `<stage>_lr` for a later one."""
    if stage == "vae":
        return protocol.steps, protocol.lr
    return getattr(config, f"{stage}_steps"), getattr(config, f"{stage}_lr", protocol.lr)


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


class Trainer:
    def __init__(self, model: MultimodalVAE, protocol: Protocol, train: Split, run_dir: Path, seed: int,
                 device="cpu", progress: bool = True, config_hash: str | None = None):
        self.model, self.protocol, self.train = model, protocol, train
        cfg = getattr(model, "config", None)
        self.config_hash = config_hash if config_hash is not None else (cfg.hash if cfg is not None else "")
        self.run_dir, self.seed, self.device = Path(run_dir), seed, torch.device(device)
        self.progress = progress
        self.state = TrainState()
        self.optimizer: torch.optim.Optimizer | None = None
        self.stop_requested = False  # set by a signal handler (preemption): checkpoint, then stop
        self.step_seconds: list[float] = []

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        atomic_torch_save({
            "protocol_hash": self.protocol.hash,
            "config_hash": self.config_hash,
            "seed": self.seed,
            "state": {"completed": list(self.state.completed), "stage": self.state.stage, "step": self.state.step,
                      "seconds": dict(self.state.seconds), "restarts": self.state.restarts},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "rng": rng,
        }, self.checkpoint_path)

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
        s = ck["state"]
        self.state = TrainState(list(s["completed"]), s["stage"], int(s["step"]), dict(s["seconds"]),
                                int(s["restarts"]) + 1)
        self._pending_optimizer = ck["optimizer"]
        torch.set_rng_state(ck["rng"]["torch"])
        if "cuda" in ck["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        return True

    # ------------------------------------------------------------ training
    def fit(self, resume: bool = False) -> TrainState:
        torch.manual_seed(self.seed)
        self._pending_optimizer = None
        if resume:
            self.restore()
        elif self.checkpoint_path.exists():
            set_aside_corrupt(self.checkpoint_path)
        self.model.to(self.device)
        for i, stage in enumerate(self.model.stages):
            if stage in self.state.completed:
                continue
            self._run_stage(i, stage)
        return self.state

    def _run_stage(self, stage_index: int, stage: str) -> None:
        p = self.protocol
        steps, lr = stage_budget(p, stage, getattr(self.model, "config", None))
        self.model.begin_stage(stage)
        self.optimizer = make_optimizer(self.model.stage_parameters(stage), lr)
        start = 0
        if self.state.stage == stage and self._pending_optimizer:
            self.optimizer.load_state_dict(self._pending_optimizer)
            start = self.state.step
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
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=p.bf16)
        # protocol.compile (off by default, recorded): the model's loss through torch.compile
        loss_fn = torch.compile(self.model.loss) if p.compile else self.model.loss
        for step in range(start, steps):
            batch = stream.batch(step)
            with autocast:
                loss, logs = loss_fn(batch, stage)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, p.grad_clip)
            self.optimizer.step()
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            self.state.step = step + 1
            last = step + 1 == steps
            if (step + 1) % p.log_every == 0 or last:
                if int(first_bad) >= 0:  # the only host sync: once per log interval
                    bar.close()
                    raise NonFiniteLoss(int(first_bad), stage)
                loss_now = float(loss.detach())
                bar.set_postfix(loss=f"{loss_now:.1f}", refresh=False)
                elapsed = time.perf_counter() - t_stage
                write_progress(self.run_dir, stage=stage, stage_index=stage_index + 1, stages=len(self.model.stages),
                               step=step + 1, steps=steps, loss=loss_now,
                               steps_per_s=round((step + 1 - start) / elapsed, 3) if elapsed > 0 else None)
            bar.update(1)
            if (step + 1) % p.checkpoint_every == 0 or last or self.stop_requested:
                if int(first_bad) >= 0:
                    bar.close()
                    raise NonFiniteLoss(int(first_bad), stage)
                self.state.seconds[stage] = done_before + time.perf_counter() - t_stage
                if last:
                    self.state.completed.append(stage)
                self.save()
                if self.stop_requested and not last:
                    bar.close()
                    raise Preempted(f"stopped at {stage} step {step + 1} on request; checkpoint written")
        bar.close()
        self.model.eval()
