"""One run, end to end: resolve names -> protocol -> data -> train -> evaluate -> record.

`run_one` is what every executor calls (inline, local processes, SLURM array tasks), so a
cell behaves the same wherever it runs. Bad input raises a ShalaBenchError before any
record is written; a failure during training is recorded as ``failed: <reason>``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shala_bench.errors import ShalaBenchError
from shala_bench.protocol import make_protocol
from shala_bench.results import (RunRecord, git_commit, hardware, now, package_versions, run_dir, run_id,
                                 write_record)
from shala_bench.trainer import NonFiniteLoss, Preempted, Trainer


@dataclass(frozen=True)
class RunSpec:
    model: str
    dataset: str = "polymnist-synth"
    profile: str = "quick"
    seed: int = 0
    overrides: tuple[tuple[str, object], ...] = ()  # already type-checked (protocol.parse_overrides)
    results: str = "runs"
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    cache_dir: str | None = None

    def with_(self, **kw) -> "RunSpec":
        return dataclasses.replace(self, **kw)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ShalaBenchError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


@dataclass
class Prepared:
    spec: RunSpec
    protocol: object
    model_entry: object
    dataset_entry: object
    dir: Path
    device: torch.device
    extra: dict = field(default_factory=dict)


def prepare(spec: RunSpec, registry=None) -> Prepared:
    """Resolve and validate everything a run needs; raises ShalaBenchError on bad input."""
    from shala_bench.registry import get_registry

    reg = registry or get_registry()
    model_entry = reg.get_model(spec.model)
    ds_entry = reg.get_dataset(spec.dataset)
    protocol = make_protocol(ds_entry, spec.profile, dict(spec.overrides))
    rid = run_id(spec.seed, protocol.n_modalities, protocol.hash)
    return Prepared(spec, protocol, model_entry, ds_entry, run_dir(Path(spec.results), spec.dataset, spec.model, rid),
                    pick_device(spec.device))


def run_one(spec: RunSpec, registry=None, trainer_hook=None) -> RunRecord:
    """Train and evaluate one cell; returns its record (also written to disk)."""
    from shala_bench.evaluate import evaluate

    prep = prepare(spec, registry)
    p, dev = prep.protocol, prep.device
    t0 = time.perf_counter()
    data = prep.dataset_entry.loader(p, spec.cache_dir)
    t_data = time.perf_counter() - t0
    torch.manual_seed(spec.seed)
    model = prep.model_entry.factory(data.spec, p)
    record = RunRecord(
        run_id=prep.dir.name, model=spec.model, dataset=spec.dataset, seed=spec.seed, n_modalities=p.n_modalities,
        profile=spec.profile, protocol_hash=p.hash, protocol=p.to_dict(), status="running",
        n_params=sum(q.numel() for q in model.parameters()), hardware=hardware(dev), git_commit=git_commit(),
        versions=package_versions(), checkpoint="checkpoint.pt", created=now(),
    )
    trainer = Trainer(model, p, data.splits["train"], prep.dir, spec.seed, dev, progress=spec.progress)
    if trainer_hook is not None:  # e.g. the SLURM task installs its preemption handler here
        trainer_hook(trainer)
    try:
        state = trainer.fit(resume=spec.resume)
    except NonFiniteLoss as e:
        record.status = f"failed: nan at step {e.step}"
        record.restarts = trainer.state.restarts
        write_record(record, prep.dir)
        return record
    except (Preempted, ShalaBenchError, KeyboardInterrupt):
        raise
    except Exception as e:
        record.status = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        record.restarts = trainer.state.restarts
        write_record(record, prep.dir)
        raise
    train_s = sum(state.seconds.values())
    t1 = time.perf_counter()
    metrics, eval_timings, artifacts = evaluate(model, p, data, prep.dir, spec.seed, dev, spec.cache_dir, registry)
    eval_s = time.perf_counter() - t1
    n_seen = {s: (p.steps if s == "vae" else getattr(p, f"{s}_steps")) * p.batch_size for s in model.stages}
    record.metrics = metrics
    record.timings = {
        "data_s": round(t_data, 3),
        **{f"train_{s}_s": round(v, 3) for s, v in state.seconds.items()},
        "train_s": round(train_s, 3),
        "train_samples_per_s": round(sum(n_seen.values()) / train_s, 1) if train_s > 0 else None,
        "eval_s": round(eval_s, 3),
        "eval_fraction_of_train": round(eval_s / train_s, 4) if train_s > 0 else None,
        **eval_timings,
    }
    record.artifacts = artifacts
    record.restarts = state.restarts
    record.status = "ok"
    write_record(record, prep.dir)
    return record
