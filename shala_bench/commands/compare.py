"""`shala-bench compare`: prints tables; writes pages only with --out DIR (never the published leaderboards/)."""

from __future__ import annotations

from pathlib import Path


def failed_table(records, dataset: str | None = None) -> str:
    """The failed runs, one short line each (model, seed, M, protocol, status); '' when there are none."""
    from tabulate import tabulate

    failed = sorted((r for r in records if not r.ok and r.status != "running" and (not dataset or r.dataset == dataset)),
                    key=lambda r: (r.dataset, r.model, r.n_modalities, r.seed, r.protocol_hash))
    if not failed:
        return ""
    rows = [[r.dataset, r.model, r.seed, r.n_modalities, r.protocol_hash[:12], r.status[:100]] for r in failed]
    return f"Failed runs ({len(failed)}; not in the tables):\n\n" + tabulate(
        rows, headers=["dataset", "model", "seed", "M", "protocol", "status"], tablefmt="github")


def guard_published(out: Path, records_dir: Path, what: str) -> None:
    """Refuse to overwrite published pages (a folder that already holds an index README.md and a records/
    folder, like leaderboards/) with pages built from records that are not its own records/."""
    from shala_bench.errors import RecordError

    out, records_dir = Path(out), Path(records_dir)
    own = (out / "records").resolve()
    if not ((out / "README.md").is_file() and own.is_dir()):
        return
    r = records_dir.resolve()
    if r == own or own in r.parents:
        return
    raise RecordError(f"{what}: {out} holds published leaderboard pages built from {out / 'records'}; refusing to "
                      f"overwrite them with the records under {records_dir}. Add those records with "
                      f"`shala-bench leaderboard --collect {records_dir}`, or write elsewhere with --out DIR")


def cmd_compare(args) -> int:
    from shala_bench.errors import UnknownNameError, close_matches
    from shala_bench.leaderboards import compare_csv, compare_json, compare_markdown, compare_tables, write_leaderboards
    from shala_bench.results import load_records

    records = load_records(Path(args.results))
    metrics = [m.strip() for arg in (args.metric or []) for m in arg.split(",") if m.strip()] or None
    if metrics:
        known = {k for r in records if r.ok and (not args.dataset or r.dataset == args.dataset) for k in r.metrics}
        for m in metrics:
            if known and m not in known:
                raise UnknownNameError(f"--metric {m}: not in these records" + close_matches(m, known))
    if args.out:
        guard_published(Path(args.out), Path(args.results), f"compare --out {args.out}")
    tables = compare_tables(records, args.dataset, metrics)
    if args.format == "json":
        print(compare_json(tables))
    elif args.format == "csv":
        print(compare_csv(tables), end="")
    else:
        if not tables:
            print(f"no ok records under {args.results}" + (f" for dataset {args.dataset}" if args.dataset else ""))
        else:
            protocols = {r.protocol_hash: r.protocol for r in records}
            print(compare_markdown(tables, protocols))
        failed = failed_table(records, args.dataset)
        if failed:
            print("\n" + failed)
    # pages only when asked for, and never over the published ones (that is `shala-bench leaderboard`)
    if args.out and records:
        for path in write_leaderboards(records, Path(args.out), args.dataset, records_dir=Path(args.results)):
            print(f"wrote {path}")
    return 0


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("compare", help="print tables of mean ± std over seeds from run records, one per dataset and M",
                       description="Read every record under --results and print one table per dataset, number of "
                                   "modalities M and protocol hash: mean ± std over seeds (ddof=1), the number of "
                                   "seeds, the best in bold, † where the best beats the runner-up beyond seed noise "
                                   "(one-sided Welch's t-test, p < 0.05), then the failed runs. Rows of different "
                                   "protocols are never ranked together. An unreadable or inconsistent record is "
                                   "skipped with a warning. Writes nothing unless --out DIR is given; "
                                   "`shala-bench leaderboard` writes the published pages in leaderboards/.")
    p.add_argument("--results", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="metric column to show (repeatable or comma-separated; default: the main ones present)")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md",
                   help="md (Markdown tables), csv (one line per table, model and metric) or json (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="also write leaderboard pages (<dataset>.md, README.md, plots/) into DIR; refused for a folder "
                        "of published pages such as leaderboards/ (default: write nothing)")
    p.add_argument("--no-write", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.set_defaults(func=cmd_compare)
