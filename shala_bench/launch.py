"""One run, end to end: resolve names -> protocol -> data -> train -> evaluate -> record.

`run_one` is what every executor calls (inline, local processes, SLURM array tasks), so a
cell behaves the same wherever it runs. Bad input raises a ShalaBenchError before any
record is written; a failure during training is recorded as ``failed: <reason>``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shala_bench.errors import ProtocolError, ShalaBenchError
from shala_bench.protocol import make_protocol
from shala_bench.results import (RunRecord, git_commit, hardware, now, package_versions, run_dir, run_id,
                                 write_record)
from shala_bench.trainer import BEST, NonFiniteLoss, Preempted, StageBusy, Trainer, write_progress

STAGE_CACHE = "stage-cache"  # under a results folder: the shared stages its runs finished (trainer.StageCache)


@dataclass(frozen=True)
class RunSpec:
    model: str
    dataset: str = "polymnist-synth"
    profile: str = "quick"
    seed: int = 0
    # protocol.parse_overrides' pairs: recipe keys type-checked, `<model>.<key>` kept as text until resolved; the
    # namespaces of other registered models are ignored (a sweep passes its overrides to every cell)
    overrides: tuple[tuple[str, object], ...] = ()
    results: str = "runs"
    resume: bool = False
    device: str = "auto"
    progress: bool = True
    cache_dir: str | None = None
    inception_weights: str | None = None  # local Inception file for FID (not part of the protocol)
    threads: int | None = None  # torch threads; None: leave torch's setting (the CLI passes default_threads())
    loggers: tuple[str, ...] = ()  # extra training loggers besides curves.csv: ("tensorboard",) (`--log`)
    # reuse a stage another run of this results folder trained exactly as this one would (trainer.StageCache,
    # under <results>/stage-cache); off: every stage trains (`run --no-share-stages`)
    share_stages: bool = True
    # a shared stage another live process is training now: raise trainer.StageBusy instead of training it too
    # (the local executor sets it and starts the cell again once the stage is filed)
    defer_shared_stages: bool = False

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
    protocol: object  # the recipe
    model_entry: object
    dataset_entry: object
    dir: Path
    device: torch.device
    config: object = None  # the model's own settings (its Config), resolved
    config_sources: dict = field(default_factory=dict)  # field -> where its value came from
    extra: dict = field(default_factory=dict)


def check_namespaces(overrides: dict, allowed: set[str], registry, what: str) -> None:
    """Every `<namespace>.<key>` override names one of `allowed` (this run's model and dataset); ProtocolError
    naming the namespace otherwise (an unknown one, or another model's, with the close matches)."""
    from shala_bench.config import split_overrides

    for ns, keys in split_overrides(overrides)[1].items():
        if ns not in allowed:
            known = set(registry.models) | set(registry.datasets)
            if ns in known:
                kind = "another model's or dataset's settings"
            else:
                import difflib

                near = difflib.get_close_matches(ns, sorted(known), n=1)
                kind = "no registered model or dataset" + (f" (did you mean {near[0]}?)" if near else "")
            raise ProtocolError(f"--set {ns}.{next(iter(keys))}: {ns!r} is {kind}; {what} takes settings of "
                                f"{', '.join(sorted(allowed))}")


def resolve(spec: RunSpec, registry=None):
    """(recipe, model entry, dataset entry, resolved model config) of a run's names, profile and overrides."""
    from shala_bench.config import split_overrides
    from shala_bench.registry import get_registry

    reg = registry or get_registry()
    model_entry = reg.get_model(spec.model)
    ds_entry = reg.get_dataset(spec.dataset)
    overrides = dict(spec.overrides)
    spaced = split_overrides(overrides)[1]
    unknown = sorted(set(spaced) - set(reg.models) - set(reg.datasets))
    if unknown:
        check_namespaces({k: v for k, v in overrides.items() if k.split(".")[0] in unknown},
                         {spec.model, spec.dataset}, reg, "this run")
    protocol = make_protocol(ds_entry, spec.profile, overrides)
    return protocol, model_entry, ds_entry, model_entry.resolve(protocol, spaced.get(spec.model))


def prepare(spec: RunSpec, registry=None) -> Prepared:
    """Resolve and validate everything a run needs; raises ShalaBenchError on bad input."""
    from shala_bench.registry import get_registry

    reg = registry or get_registry()
    if spec.seed < 0:
        raise ProtocolError(f"--seed {spec.seed}: a training seed must be >= 0")
    if spec.threads is not None and spec.threads < 1:
        raise ProtocolError(f"--threads {spec.threads}: must be >= 1")
    from shala_bench.callbacks import make_loggers

    make_loggers(spec.loggers)  # an unknown logger, or tensorboard not installed: one line, before anything runs
    protocol, model_entry, ds_entry, cfg = resolve(spec, reg)
    rid = run_id(spec.seed, protocol.n_modalities, protocol.hash, cfg.config.hash)
    return Prepared(spec, protocol, model_entry, ds_entry, run_dir(Path(spec.results), spec.dataset, spec.model, rid),
                    pick_device(spec.device), cfg.config, cfg.sources)


def restarts(trainer: Trainer) -> int:
    """Restarts of this run: resumed checkpoints, or SLURM's requeue count when the job was requeued
    before its first checkpoint (then nothing was resumed, yet the job did restart)."""
    return max(trainer.state.restarts, int(os.environ.get("SLURM_RESTART_COUNT") or 0))


def run_one(spec: RunSpec, registry=None, callbacks=()) -> RunRecord:
    """Train and evaluate one cell; returns its record (also written to disk). progress.json beside it ends as
    `done` or `failed` (with the reason). `callbacks` (trainer.Callback) join the harness's own (progress file,
    curves.csv, the `loggers`), e.g. the SLURM task's preemption handler."""
    prep = prepare(spec, registry)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        return _run_prepared(prep, spec, registry, callbacks)
    except Preempted:
        raise  # requeued: progress.json keeps the step the checkpoint has
    except StageBusy as e:
        write_progress(prep.dir, stage="deferred", reason=str(e))
        raise
    except (Exception, KeyboardInterrupt) as e:
        if prep.dir.exists():  # bad input found before anything was written leaves nothing behind
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            write_progress(prep.dir, stage="failed", reason=why)
        raise


def eval_progress(run_dir: Path, say: bool):
    """on_metric for evaluate: progress.json names the metric being computed; with `say`, one line per metric
    on stderr (the first, coherence, trains the judge classifiers when they are not cached yet)."""
    import sys

    t = {"start": time.perf_counter(), "last": None}

    def on_metric(i: int, n: int, name: str) -> None:
        write_progress(run_dir, stage="eval", metric=name, metric_index=i, metrics=n)
        if say:
            took = f" ({t['last']} took {time.perf_counter() - t['at']:.0f}s)" if t["last"] else ""
            print(f"eval {i}/{n}: {name}{took}", file=sys.stderr, flush=True)
        t["last"], t["at"] = name, time.perf_counter()

    return on_metric


def _record_failure(record: RunRecord, trainer: Trainer, run_dir: Path, where: str, e: Exception) -> None:
    """Write the record of a run that an unexpected exception ended, as `failed: <where><type>: <first line>`."""
    record.status = f"failed: {where}{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    record.restarts = restarts(trainer)
    write_record(record, run_dir)


def _run_prepared(prep: Prepared, spec: RunSpec, registry, callbacks) -> RunRecord:
    from shala_bench.evaluate import evaluate

    p, dev = prep.protocol, prep.device
    t0 = time.perf_counter()
    data = prep.dataset_entry.loader(p, spec.cache_dir)
    t_data = time.perf_counter() - t0
    torch.manual_seed(spec.seed)
    model = prep.model_entry.build(data.spec, p, prep.config)
    record = RunRecord(
        run_id=prep.dir.name, model=spec.model, dataset=spec.dataset, seed=spec.seed, n_modalities=p.n_modalities,
        profile=spec.profile, protocol_hash=p.hash, protocol=p.to_dict(), config=prep.config.to_dict(),
        config_hash=prep.config.hash, status="running",
        n_params=sum(q.numel() for q in model.parameters()), hardware=hardware(dev), git_commit=git_commit(),
        versions=package_versions(), checkpoint=BEST, created=now(),
    )
    from shala_bench.callbacks import CurvesCallback, ProgressCallback, make_loggers
    from shala_bench.validation import Validator

    validator = Validator(data, p, prep.dataset_entry.selection, dev, spec.cache_dir, spec.seed)
    t0 = time.perf_counter()
    if validator.enabled and validator.dataset_selection != "bound":
        validator.classifiers()  # the judges (cached; trained on first use) before training, not timed with it
    t_judges = time.perf_counter() - t0
    harness = [ProgressCallback(), CurvesCallback(), *make_loggers(spec.loggers)]
    trainer = Trainer(model, p, data.splits["train"], prep.dir, spec.seed, dev, progress=spec.progress,
                      callbacks=[*harness, *callbacks], validator=validator, config_hash=prep.config.hash,
                      stage_cache=Path(spec.results) / STAGE_CACHE if spec.share_stages else None,
                      defer_shared=spec.defer_shared_stages)
    try:
        state = trainer.fit(resume=spec.resume)
    except NonFiniteLoss as e:
        record.status = f"failed: nan at step {e.step}"
        record.restarts = restarts(trainer)
        write_record(record, prep.dir)
        write_progress(prep.dir, stage="failed", reason=record.status.removeprefix("failed: "))
        return record
    except (Preempted, StageBusy, ShalaBenchError, KeyboardInterrupt):
        raise
    except Exception as e:
        _record_failure(record, trainer, prep.dir, "", e)
        raise
    train_s = sum(state.seconds.values())
    t1 = time.perf_counter()
    write_progress(prep.dir, stage="eval")
    try:
        metrics, eval_timings, artifacts = evaluate(model, p, data, prep.dir, spec.seed, dev, spec.cache_dir, registry,
                                                    options={"inception_weights": spec.inception_weights},
                                                    on_metric=eval_progress(prep.dir, spec.progress))
    except (ShalaBenchError, KeyboardInterrupt):
        raise
    except Exception as e:
        _record_failure(record, trainer, prep.dir, "evaluation: ", e)
        raise
    eval_s = time.perf_counter() - t1
    stages = {s: state.summaries[s] for s in model.stages}
    val_s = sum(state.val_seconds.values())
    # the seconds of stages taken from another run (their summaries name it): counted in this cell's cost, as it
    # would be alone, and once only in what a grid cost
    reused_s = sum(state.seconds.get(s, 0.0) for s, v in stages.items() if v.get("reused_from"))
    record.train_samples = sum(int(v["samples"]) for v in stages.values())
    record.best_step = {s: v["best_step"] for s, v in stages.items()}
    record.train_flops = float(sum(v["train_flops"] for v in stages.values()))
    record.stages = stages
    conv = [v["converged"] for v in stages.values()]
    record.converged = None if any(c is None for c in conv) else all(conv)
    record.metrics = metrics
    record.timings = {
        "data_s": round(t_data, 3),
        "judges_s": round(t_judges, 3),
        **{f"train_{s}_s": round(v, 3) for s, v in state.seconds.items()},
        "train_s": round(train_s, 3),
        "val_s": round(val_s, 3),  # validation during training, part of train_s
        "reused_s": round(reused_s, 3),  # part of train_s: stages reused from another run, not trained here
        # training throughput: the samples the stages actually saw, over their time spent training (not validating)
        "train_samples_per_s": round(record.train_samples / (train_s - val_s), 1) if train_s - val_s > 0 else None,
        "eval_s": round(eval_s, 3),
        "eval_fraction_of_train": round(eval_s / train_s, 4) if train_s > 0 else None,
        **eval_timings,
    }
    record.artifacts = artifacts
    record.restarts = restarts(trainer)
    record.status = "ok"
    write_record(record, prep.dir)
    write_progress(prep.dir, stage="done")
    return record


def evaluate_checkpoint(run: Path, overrides: dict | None = None, results: Path | None = None, device: str = "auto",
                        cache_dir: str | None = None, inception_weights: str | None = None,
                        registry=None) -> tuple[RunRecord, Path]:
    """Re-evaluate a finished run's checkpoint under the current protocol, without training.

    `run` is a run folder or its record.json. The protocol takes the run's data, training
    and model settings from its record and the evaluation section (`EVALUATION_FIELDS`)
    from the current profile, then `overrides` (evaluation fields only). The new record
    goes to ``<results>/<dataset>/<model>/<run_id>/record.json`` for the new protocol's
    run_id (`results` defaults to the run's results folder); its `checkpoint` points at
    the run's checkpoint (relative to the new folder) and `artifacts["source_record"]` at
    the record it re-evaluates. When the protocol is unchanged the folder is the run's
    own: the training run's record is kept as ``record.previous.json`` (an earlier
    re-evaluation there is replaced). Returns (record, path).
    """
    import os

    from shala_bench.errors import CheckpointError, ProtocolError, RecordError
    from shala_bench.evaluate import evaluate
    from shala_bench.protocol import EVALUATION_FIELDS, trained_fields
    from shala_bench.registry import get_registry
    from shala_bench.results import RECORD, read_record
    from shala_bench.trainer import load_checkpoint

    run = Path(run)
    src = run / RECORD if run.is_dir() else run
    if not src.is_file():
        raise RecordError(f"no run record at {src} (pass a run folder or its record.json)")
    rec = read_record(src)
    if not rec.ok:
        raise RecordError(f"run {src.parent} has status {rec.status!r}: only finished runs can be re-evaluated")
    ck_path = (src.parent / rec.checkpoint).resolve()
    if not rec.checkpoint or not ck_path.is_file():
        raise CheckpointError(f"checkpoint {ck_path} of run {src.parent} is missing")
    reg = registry or get_registry()
    model_entry, ds_entry = reg.get_model(rec.model), reg.get_dataset(rec.dataset)
    if rec.protocol.get("protocol_version", 1) < 2:
        raise RecordError(f"run {src.parent} was trained under protocol v{rec.protocol.get('protocol_version', 1)}, "
                          "whose model settings this version keeps elsewhere: it cannot be re-evaluated; retrain it "
                          "with `shala-bench run`")
    from shala_bench.config import split_overrides

    cfg_cls = model_entry.config
    model_eval = set(cfg_cls.evaluation_fields()) if cfg_cls else set()
    shared, spaced = split_overrides(overrides)
    check_namespaces({k: v for k, v in (overrides or {}).items() if "." in k}, {rec.model}, reg, "eval of this run")
    allowed = ", ".join(list(EVALUATION_FIELDS) + [f"{rec.model}.{k}" for k in sorted(model_eval)])
    bad = sorted(set(shared) - set(EVALUATION_FIELDS)) + sorted(f"{rec.model}.{k}" for k in
                                                                 set(spaced.get(rec.model, {})) - model_eval)
    if bad:
        raise ProtocolError(f"--set {bad[0]}: eval changes only evaluation settings ({allowed}); "
                            "retrain with `shala-bench run` to change the others")
    kept = trained_fields(rec.protocol)
    p = make_protocol(ds_entry, rec.profile, {**kept, **shared})
    recorded = {k: v for k, v in (rec.config or {}).items() if k not in model_eval}
    cfg = model_entry.resolve(p, {**recorded, **spaced.get(rec.model, {})}).config
    dev = pick_device(device)
    ck = load_checkpoint(ck_path, fix="Retrain the run with `shala-bench run` (without --resume) after deleting it.")
    if ck.get("seed") != rec.seed or not _trained_under(ck.get("protocol_hash"), src, rec):
        raise CheckpointError(f"checkpoint {ck_path} does not belong to the run recorded in {src}")

    t0 = time.perf_counter()
    data = ds_entry.loader(p, cache_dir)
    t_data = time.perf_counter() - t0
    torch.manual_seed(rec.seed)
    model = model_entry.build(data.spec, p, cfg)
    unfinished = [s for s in model.stages if s not in ck["state"]["completed"]]
    if unfinished:
        raise CheckpointError(f"checkpoint {ck_path} has not finished stage {unfinished[0]!r}; "
                              "finish it with `shala-bench run --resume`")
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError, TypeError):
        from shala_bench.trainer import state_mismatch

        raise CheckpointError(f"checkpoint {ck_path} does not fit this model: {state_mismatch(model, ck['model'])}. "
                              "The model's code changed since it was trained: retrain it with `shala-bench run`.") \
            from None

    rid = run_id(rec.seed, p.n_modalities, p.hash, cfg.hash)
    root = Path(results) if results is not None else src.parent.parent.parent.parent
    out = run_dir(root, rec.dataset, rec.model, rid)
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    metrics, eval_timings, artifacts = evaluate(model, p, data, out, rec.seed, dev, cache_dir, reg,
                                                options={"inception_weights": inception_weights})
    eval_s = time.perf_counter() - t1
    same = (out / RECORD).resolve() == src.resolve()
    # in its own folder a re-evaluation supersedes the record; the training run's record is kept
    keep = same and "source_record" not in rec.artifacts
    source = os.path.relpath(src.resolve(), out.resolve()) if not same else (
        "record.previous.json" if keep else rec.artifacts["source_record"])
    train = {k: v for k, v in rec.timings.items() if k.startswith("train")}
    train_s = train.get("train_s") or 0
    new = dataclasses.replace(
        rec, run_id=rid, protocol_hash=p.hash, protocol=p.to_dict(), config=cfg.to_dict(), config_hash=cfg.hash,
        metrics=metrics,
        timings={"data_s": round(t_data, 3), **train, "eval_s": round(eval_s, 3),
                 "eval_fraction_of_train": round(eval_s / train_s, 4) if train_s else None, **eval_timings},
        artifacts={**artifacts, "source_record": source},
        checkpoint=os.path.relpath(ck_path, out.resolve()), hardware=hardware(dev), git_commit=git_commit(),
        versions=package_versions(), created=now())
    if keep:
        os.replace(src, out / "record.previous.json")
    return new, write_record(new, out)


def _trained_under(ck_hash: str | None, src: Path, rec: RunRecord) -> bool:
    """Whether a checkpoint's protocol hash is that of the record or of a record it re-evaluates.

    Re-evaluated records name their source (artifacts["source_record"]); the chain ends at
    the training run's record. A chain broken by a deleted record is given the benefit of
    the doubt (the seed check and loading the weights still guard).
    """
    from shala_bench.errors import RecordError
    from shala_bench.results import read_record

    for _ in range(100):
        if ck_hash == rec.protocol_hash:
            return True
        if "source_record" not in rec.artifacts:
            return False
        src = src.parent / rec.artifacts["source_record"]
        try:
            rec = read_record(src)
        except RecordError:
            return True
    return False
