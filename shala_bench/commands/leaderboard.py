"""`shala-bench leaderboard`."""

from __future__ import annotations

from pathlib import Path


def cmd_leaderboard(args) -> int:
    from shala_bench.commands.compare import guard_published
    from shala_bench.errors import RecordError, UnknownNameError, close_matches
    from shala_bench.leaderboards import collect_records, write_leaderboards
    from shala_bench.results import load_records

    records_dir = Path(args.results)
    if args.collect and not Path(args.collect).is_dir():
        raise RecordError(f"--collect {args.collect}: no such results folder")
    if args.collect:
        copied, same = collect_records(Path(args.collect), records_dir)
        print(f"collected {len(copied)} record(s) from {args.collect} into {records_dir} ({len(same)} unchanged)")
    if not records_dir.is_dir():
        raise RecordError(f"records folder {records_dir} does not exist: copy records into it with "
                          "`shala-bench leaderboard --collect RESULTS`, or pass --results")
    if not args.collect:  # --collect copies records into --results first: then they are its own
        guard_published(Path(args.out), records_dir, "leaderboard")
    records = load_records(records_dir)
    datasets = {r.dataset for r in records}
    if args.dataset and args.dataset not in datasets:
        raise UnknownNameError(f"--dataset {args.dataset}: no records of it in {records_dir}"
                               + close_matches(args.dataset, datasets))
    written = write_leaderboards(records, Path(args.out), args.dataset, records_dir=records_dir)
    n_ok = sum(r.ok for r in records)
    print(f"{len(records)} record(s) ({n_ok} ok) -> {len(written)} file(s) under {args.out}")
    for path in written:
        print(f"wrote {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="regenerate leaderboards/ (README.md index, <dataset>.md, plots) from records",
                       description="Regenerate <out>/README.md (an index of datasets and protocol families) and "
                                   "<out>/<dataset>.md (modality-scaling curves as PNG plots and tables, one "
                                   "leaderboard per M) from the run records under --results only. Deterministic: "
                                   "running it twice on the same records gives byte-identical files. Pages already "
                                   "published in --out are built from <out>/records only: records from elsewhere are "
                                   "refused unless --collect copies them there first. An unreadable or inconsistent "
                                   "record is skipped with a warning.")
    p.add_argument("--results", default="leaderboards/records",
                   help="records folder, <dataset>/<model>/<run_id>/record.json (default: %(default)s)")
    p.add_argument("--out", default="leaderboards", help="where to write the pages (default: %(default)s)")
    p.add_argument("--collect", metavar="RESULTS",
                   help="first copy the finished record.json files from this results folder into --results, each "
                        "with its curves.csv and sample grids (running runs are left out)")
    p.add_argument("--dataset", help="only regenerate this dataset's page (and the index)")
    p.set_defaults(func=cmd_leaderboard)
