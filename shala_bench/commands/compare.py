"""`shala-bench compare`."""

from __future__ import annotations

from pathlib import Path


def cmd_compare(args) -> int:
    from shala_bench.leaderboards import compare_csv, compare_json, compare_markdown, compare_tables, write_leaderboards
    from shala_bench.errors import UnknownNameError, close_matches
    from shala_bench.results import load_records

    records = load_records(Path(args.results))
    metrics = [m.strip() for arg in (args.metric or []) for m in arg.split(",") if m.strip()] or None
    if metrics:
        known = {k for r in records if r.ok and (not args.dataset or r.dataset == args.dataset) for k in r.metrics}
        for m in metrics:
            if known and m not in known:
                raise UnknownNameError(f"--metric {m}: not in these records" + close_matches(m, known))
    tables = compare_tables(records, args.dataset, metrics)
    if args.format == "json":
        print(compare_json(tables))
    elif args.format == "csv":
        print(compare_csv(tables), end="")
    elif not tables:
        print(f"no ok records under {args.results}" + (f" for dataset {args.dataset}" if args.dataset else ""))
    else:
        protocols = {r.protocol_hash: r.protocol for r in records}
        print(compare_markdown(tables, protocols))
    # the Markdown view also writes the pages; csv and json are for pipes and only print
    if args.format == "md" and tables and not args.no_write:
        for path in write_leaderboards(records, Path(args.out), args.dataset, records_dir=Path(args.results)):
            print(f"wrote {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="tables of mean ± std over seeds from run records, one per dataset and M",
                       description="Read every record under --results and print one table per dataset, number of "
                                   "modalities M and protocol hash: mean ± std over seeds (ddof=1), the number of "
                                   "seeds, the best in bold, † where the best beats the runner-up beyond seed noise "
                                   "(one-sided Welch's t-test, p < 0.05). Rows of different protocols are never "
                                   "ranked together. `shala-bench leaderboard` writes the pages with plots.")
    p.add_argument("--results", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="metric column to show (repeatable or comma-separated; default: the main ones present)")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md",
                   help="md (Markdown tables), csv (one line per table, model and metric) or json (default: %(default)s)")
    p.add_argument("--out", default="leaderboards",
                   help="with --format md, also write the leaderboard pages (<dataset>.md, README.md, plots/) here "
                        "(default: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only; write no pages")
    p.set_defaults(func=cmd_compare)
