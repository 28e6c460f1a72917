"""`shala-bench run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def threads_arg(args) -> int | None:
    """--threads as given (checked: >= 1), or None."""
    from shala_bench.errors import ProtocolError

    if args.threads is not None and args.threads < 1:
        raise ProtocolError(f"--threads {args.threads}: must be >= 1")
    return args.threads


def add_threads_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"torch CPU threads (recorded in the record's hardware.torch_threads; on a CPU the thread count "
                        f"changes the numbers slightly, as a seed does) (default: {default})")


def add_log_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", dest="loggers", action="append", choices=("csv", "tensorboard"), default=[],
                   help="training loggers (repeatable): csv (curves.csv and curves.png beside the record, always "
                        "written), tensorboard (events under <run>/tensorboard; needs the tensorboard package)")


def loggers_arg(args) -> tuple[str, ...]:
    """--log values besides the always-on csv; tensorboard checked importable (one line otherwise)."""
    loggers = tuple(dict.fromkeys(x for x in args.loggers if x != "csv"))
    if "tensorboard" in loggers:
        from shala_bench.callbacks import require_tensorboard

        require_tensorboard()
    return loggers


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model name (see `shala-bench list models`)")
    p.add_argument("--dataset", default="polymnist-synth", help="registered dataset (default: %(default)s)")
    p.add_argument("--profile", default="quick",
                   help="recipe profile: smoke (seconds, tests), quick (a CPU recipe chosen by a measured study, trained to "
                        "a validation plateau within max_train_samples; `shala-bench config` prints it), paper (the "
                        "field's recipe and published budgets, for GPUs)"
                        " (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a setting, type-checked (repeatable): a shared recipe setting (beta=2.5; changes the "
                        "recipe hash, so the run is ranked apart) or the model's own (mopoe.beta=2.5; changes its "
                        "config hash, part of the run id). `shala-bench config --model M` lists both")
    p.add_argument("--results", default="runs", help="results folder for records and checkpoints (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint if it has one")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-share-stages", action="store_true",
                   help="train every stage, even one another run in --results finished exactly as this run would "
                        "(by default such a stage, e.g. the stage 1 shala-cond and shala-post share, is reused from "
                        "<results>/stage-cache, and its record names the run it came from)")
    add_threads_arg(p, "the usable CPUs (os.sched_getaffinity) that other processes are not busy on")
    add_log_arg(p)
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="local Inception weights for FID (weights-inception-2015-12-05-6726825d.pth, sha256-checked; "
                        "default: $SHALA_BENCH_INCEPTION_WEIGHTS or torch hub's checkpoints folder); never downloaded")


def cmd_run(args) -> int:
    from shala_bench.executors import default_threads
    from shala_bench.launch import RunSpec, run_one
    from shala_bench.protocol import parse_overrides

    from shala_bench.launch import check_namespaces
    from shala_bench.registry import get_registry

    overrides = parse_overrides(args.overrides)
    check_namespaces(overrides, {args.model, args.dataset}, get_registry(), "this run")
    spec = RunSpec(model=args.model, dataset=args.dataset, profile=args.profile, seed=args.seed,
                   overrides=tuple(overrides.items()), results=args.results,
                   resume=args.resume, device=args.device, progress=not args.no_progress,
                   inception_weights=args.inception_weights, loggers=loggers_arg(args),
                   share_stages=not args.no_share_stages,
                   threads=threads_arg(args) or (default_threads(1) if args.executor == "inline" else None))
    if args.executor != "inline":
        return run_elsewhere(args, spec)
    rec = run_one(spec)
    path = Path(args.results) / rec.dataset / rec.model / rec.run_id / "record.json"
    if not rec.ok:
        print(f"shala-bench: run {rec.run_id} {rec.status} (record: {path})", file=sys.stderr)
        return 1
    m = rec.metrics
    keys = [k for k in ("coherence_joint", "coherence_cond_mean", "classifier_acc_min") if k in m]
    summary = ", ".join(f"{k}={m[k]:.3f}" for k in keys)
    print(f"{rec.model} on {rec.dataset} (seed {rec.seed}, M={rec.n_modalities}, protocol {rec.protocol_hash[:12]}): "
          f"{summary}; train {rec.timings.get('train_s', 0):.0f}s, eval {rec.timings.get('eval_s', 0):.0f}s, "
          f"{rec.hardware.get('torch_threads', '?')} thread(s)" + judge_warning(m))
    print(f"record: {path}")
    return 0


# Below this test accuracy a judge classifier cannot tell generated digits apart, so coherences mean nothing
# (the smoke profile trains them for one epoch: ~chance, and coherence_joint can read 1.000 — all agree on one class).
USABLE_CLASSIFIER_ACC = 0.8


def judge_warning(metrics: dict) -> str:
    """'' or a warning clause for a summary line whose coherences are judged by classifiers near chance."""
    acc = metrics.get("classifier_acc_min")
    if not isinstance(acc, (int, float)) or acc >= USABLE_CLASSIFIER_ACC:
        return ""
    return (f" — WARNING: judge classifiers below usable accuracy (min {acc:.2f} < {USABLE_CLASSIFIER_ACC}): "
            "coherences are not meaningful under this profile")

def run_elsewhere(args, spec) -> int:
    """--executor local|slurm: the run as a one-cell sweep, so `status` and `cancel` work on it too."""
    from shala_bench import sweep as sw
    from shala_bench.cluster import load_profile
    from shala_bench.commands.sweep import finish
    from shala_bench.executors import make_executor

    grid = sw.Grid(models=(spec.model,), dataset=spec.dataset, seeds=(spec.seed,), profile=spec.profile,
                   overrides=spec.overrides, device=spec.device, resume=spec.resume,
                   inception_weights=spec.inception_weights, loggers=spec.loggers)
    ex = make_executor(args.executor, 1, load_profile(args.cluster) if args.executor == "slurm" else None, threads_arg(args))
    m = sw.create_sweep(grid, args.results, sw.new_sweep_name(args.results, prefix=f"run-{spec.model}"))
    print(f"run {m.name}: {spec.model} seed {spec.seed} with --executor {ex.kind}; manifest {m.path}", flush=True)
    sub = sw.launch(m, ex, [0])
    return finish(m, sub, args)


def add_parser(sub) -> None:
    from shala_bench.commands.sweep import add_executor_args

    p = sub.add_parser("run", help="train and evaluate one model on one dataset; writes a run record",
                       description="Train one model under a protocol profile, evaluate it and write "
                               "<results>/<dataset>/<model>/<run_id>/record.json (run_id = seed, M, recipe hash, config hash).")
    add_run_args(p)
    add_executor_args(p, "inline")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the job to finish and print its status")
    p.set_defaults(func=cmd_run)
