"""`shala-bench status`."""

from __future__ import annotations

import json


def cmd_status(args) -> int:
    from shala_bench import sweep as sw

    m = sw.find_sweep(args.sweep, args.results)
    rows = sw.sweep_status(m)
    if args.json:
        import dataclasses

        print(json.dumps({"sweep": m.name, "manifest": str(m.path), "cells": [dataclasses.asdict(r) for r in rows]},
                         indent=1))
        return 0
    subs = ", ".join(f"{s.executor}" + (f" array {s.array_id}" if s.array_id else "") + f" ({len(s.cells)} cells)"
                     for s in m.submissions) or "nothing submitted"
    print(f"sweep {m.name}: {subs}")
    print(f"logs: {m.log_folder}")
    print(sw.status_table(rows))
    counts = sw.summary(rows)
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="state of each cell of a sweep: pending, running, done or failed (with why)",
                       description="Join the scheduler's view, the run records and the tasks' own reports into one "
                                   "line per cell; a failed cell shows its error's last line and its log.")
    p.add_argument("sweep", nargs="?", metavar="SWEEP", help="sweep name or folder (default: the latest under --results)")
    p.add_argument("--results", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
