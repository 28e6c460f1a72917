"""`shala-bench sweep`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def _say(line: str) -> None:
    print(line, flush=True)


def _executor(args, manifest=None):
    """--executor/--cluster/--workers, falling back on what the sweep used last (for --resume)."""
    from shala_bench.cluster import ClusterProfile, load_profile
    from shala_bench.executors import make_executor

    last = manifest.submissions[-1] if manifest is not None and manifest.submissions else None
    kind = args.executor or (last.executor if last is not None else "local")
    profile = None
    if kind == "slurm":
        if args.cluster:
            profile = load_profile(args.cluster)
        elif last is not None and last.cluster:
            profile = ClusterProfile.from_dict(last.cluster)
        else:
            profile = load_profile(None)
    from shala_bench.commands.run import loggers_arg, threads_arg

    return make_executor(kind, args.workers, profile, threads_arg(args))


def print_submitted(m, sub, results: str) -> None:
    """What a user needs after handing an array to the scheduler: its id, its logs, how to watch it."""
    from shala_bench.executors import JobPaths

    n = len(sub.jobs)
    par = (sub.cluster or {}).get("array_parallelism")
    where = (sub.cluster or {}).get("partition") or "the default partition"
    what = f"job array {sub.array_id} ({n} tasks, at most {min(n, par or n)} at once)" if n > 1 else f"job {sub.array_id}"
    first = next(iter(sub.jobs.values()))
    res = "" if Path(results).absolute() == Path("runs").absolute() else f" --results {results}"
    print(f"submitted {what} to {where}")
    print(f"logs:   {m.log_folder}/<job>/  (e.g. {JobPaths(m.log_folder / '%j', first, 0).stdout})")
    print(f"watch:  shala-bench status {m.name}{res}    or    squeue -j {sub.array_id}")
    print(f"cancel: shala-bench cancel {m.name}{res};  rerun failed cells: shala-bench sweep --resume {m.name}{res}")


def finish(m, sub, args) -> int:
    """After launching: the slurm hand-off (and --wait), or the local/inline outcome."""
    from shala_bench import sweep as sw

    if sub is not None and sub.executor == "slurm":
        print_submitted(m, sub, args.results)
        if not getattr(args, "wait", False):
            return 0
        rows = sw.wait(m, on_change=lambda c: _say("  " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))))
    else:
        rows = sw.sweep_status(sw.Manifest.load(m.path))
    print(sw.status_table(rows))
    counts = sw.summary(rows)
    print(f"sweep {m.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0 if all(r.state == "done" for r in rows) else 1


def cmd_sweep(args) -> int:
    from shala_bench import sweep as sw
    from shala_bench.executors import SlurmExecutor
    from shala_bench.commands.run import loggers_arg, threads_arg
    from shala_bench.protocol import parse_overrides

    threads_arg(args)  # a bad --threads is refused before the sweep's folder is made
    loggers = loggers_arg(args)
    if args.resume:
        if args.models:
            raise sw.SweepError("--resume SWEEP takes the grid from the sweep's manifest; drop --models")
        m = sw.find_sweep(args.resume, args.results)
        m.grid = dataclasses.replace(m.grid, resume=True)
        todo, done = sw.cells_to_run(m)
        busy = set(sw.active_cells(m))
        if busy & set(todo):
            _say(f"{len(busy & set(todo))} cell(s) still pending or running; not resubmitting them")
        todo = [i for i in todo if i not in busy]
    else:
        models = tuple(x.strip() for x in (args.models or "").split(",") if x.strip())
        grid = sw.Grid(models=models, dataset=args.dataset, seeds=sw.parse_int_list(args.seeds, "seeds"),
                       modalities=sw.parse_int_list(args.modalities, "modalities") if args.modalities else (),
                       profile=args.profile, overrides=tuple(parse_overrides(args.overrides).items()),
                       device=args.device, inception_weights=args.inception_weights, loggers=loggers)
        sw.check_models(grid.models)
        from shala_bench.launch import check_namespaces
        from shala_bench.registry import get_registry

        check_namespaces(dict(grid.overrides), {*grid.models, grid.dataset}, get_registry(), "this sweep")
        m = sw.create_sweep(grid, args.results, args.name)
        todo, done = sw.cells_to_run(m)
    ex = _executor(args, m)
    if ex.kind == "slurm":
        SlurmExecutor.check_available()
    g = m.grid
    _say(f"sweep {m.name}: {len(m.cells)} cells ({len(g.models)} models x {len(g.modalities) or 1} M x "
         f"{len(g.seeds)} seeds), profile {g.profile}; {len(done)} with an ok record already"
         + (f"; {len(todo)} to run with --executor {ex.kind}" if todo else ""))
    _say(f"manifest: {m.path}")
    if not todo:
        _say("nothing to run")
        return 0
    if ex.kind == "local":
        _say(f"{ex.workers} worker(s), {ex.threads} torch thread(s) each; logs under {m.log_folder}")
    sub = sw.launch(m, ex, todo, say=_say)
    return finish(m, sub, args)


def add_executor_args(p: argparse.ArgumentParser, default: str | None) -> None:
    from shala_bench.executor_names import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS, default=default,
                   help="inline: one after another in this process; local: parallel worker processes; slurm: one "
                        "SLURM job array (default: %s)" % (default or "local; for --resume, what the sweep used"))
    p.add_argument("--cluster", metavar="PROFILE",
                   help="SLURM cluster profile, slurm/<name>.toml (partition, account, gpus, time, ...); "
                        "see slurm/example.toml")


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run the grid models x seeds x numbers of modalities (skips cells with an ok record)",
                       description="Expand models x seeds x n_modalities into cells, skip those that already have an ok "
                                   "record, and run the rest through an executor. The sweep's manifest, logs and cell "
                                   "states go to <results>/sweeps/<name>/.",
                       epilog="examples:\n"
                              "  shala-bench sweep --models shala,mvae,mmvae,mopoe,mmvae+ --seeds 0-2 --modalities 2,3,5,8\n"
                              "  shala-bench sweep --models mvae --profile smoke --executor slurm --cluster slurm/test-cluster.toml\n"
                              "  shala-bench status            # the latest sweep, cell by cell\n"
                              "  shala-bench sweep --resume sweep-20250101-120000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated registered models, e.g. shala,mvae,mmvae,mopoe,mmvae+")
    p.add_argument("--dataset", default="polymnist-synth", help="registered dataset (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="training seeds: 0-2, 0,3,7 (default: %(default)s)")
    p.add_argument("--modalities", help="numbers of modalities M, e.g. 2,3,5,8 (default: the profile's)")
    p.add_argument("--profile", default="quick", help="protocol profile: smoke, quick, paper (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a protocol field for every cell (repeatable); changes the protocol hash")
    p.add_argument("--results", default="runs", help="results folder (default: %(default)s)")
    add_executor_args(p, None)
    p.add_argument("--workers", type=int,
                   help="local: tasks at once (default: the number of cores; each gets cores // workers torch "
                        "threads); slurm: array tasks at once (default: the profile's array_parallelism)")
    from shala_bench.commands.run import add_threads_arg

    add_threads_arg(p, "local: the usable CPUs (os.sched_getaffinity) // workers; slurm: the profile's "
                       "cpus_per_task; inline: the CPUs other processes are not busy on")
    p.add_argument("--name", help="sweep name (default: sweep-<UTC date-time>)")
    p.add_argument("--resume", metavar="SWEEP", help="resubmit only the cells of SWEEP without an ok record")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the array to finish and print its status")
    p.add_argument("--device", default="auto", help="auto (CUDA when the task has one), cpu, cuda (default: %(default)s)")
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="local Inception weights for FID, readable from every task (see `run --help`)")
    from shala_bench.commands.run import add_log_arg

    add_log_arg(p)
    p.set_defaults(func=cmd_sweep)
