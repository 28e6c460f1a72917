"""`shala-bench compare`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_compare(args) -> int:
    from shala_bench.leaderboards import tables, write_leaderboards
    from shala_bench.results import load_records

    records = load_records(Path(args.results))
    metrics = args.metric or None
    tabs = tables(records, args.dataset, metrics)
    if not tabs:
        print(f"no ok records under {args.results}" + (f" for dataset {args.dataset}" if args.dataset else ""))
        return 0
    for ds, items in tabs.items():
        for header, md in items:
            print(f"## {header}\n\n{md}\n")
    if not args.no_write:
        for path in write_leaderboards(records, Path(args.out), args.dataset, metrics):
            print(f"wrote {path}")
    return 0

def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="tables of mean ± std over seeds from run records; writes leaderboards/",
                       description="Read every record under --results and print one Markdown table per dataset, "
                               "number of modalities and protocol hash (rows of different protocols are never "
                               "ranked together); write leaderboards/<dataset>.md.")
    p.add_argument("--results", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--metric", action="append", help="metric column to show (repeatable; default: the main ones)")
    p.add_argument("--out", default="leaderboards", help="where to write <dataset>.md (default: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.set_defaults(func=cmd_compare)
