"""`shala-bench cancel`."""

from __future__ import annotations


def cmd_cancel(args) -> int:
    from shala_bench import sweep as sw

    m = sw.find_sweep(args.sweep, args.results)
    done = sw.cancel(m)
    if not done:
        print(f"sweep {m.name}: no pending or running cells")
        return 0
    for line in done:
        print(f"sweep {m.name}: {line}")
    print(f"cells with an ok record stay; rerun the rest with: shala-bench sweep --resume {m.name}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("cancel", help="cancel the pending and running cells of a sweep",
                       description="scancel a sweep's SLURM array, or stop its local launcher and workers.")
    p.add_argument("sweep", metavar="SWEEP", help="sweep name or folder")
    p.add_argument("--results", default="runs", help="results folder (default: %(default)s)")
    p.set_defaults(func=cmd_cancel)
