"""`shala-bench data prepare|info`: convert a dataset from its official files once; show what a run will load."""

from __future__ import annotations

import argparse
import json


def _protocol(args):
    from shala_bench.protocol import make_protocol, parse_overrides
    from shala_bench.registry import get_registry

    entry = get_registry().get_dataset(args.name)
    return entry, make_protocol(entry, args.profile, parse_overrides(args.overrides))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_info(info: dict) -> None:
    from tabulate import tabulate

    rows = [[m["name"], m["kind"], "x".join(map(str, m["shape"])), m["dtype"], m["likelihood"]] for m in info["modalities"]]
    print(f"dataset: {info['dataset']} ({info['n_classes']} classes{', multi-label' if info['multilabel'] else ''})")
    print(tabulate(rows, headers=["modality", "kind", "shape", "dtype", "likelihood"], tablefmt="simple"))
    print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    print(f"cache: {info['cache']}")
    src = dict(info.get("source") or {})
    if "root" in src:
        print(f"source: {src.pop('root')} ({src.pop('files', '?')} files, {_size(src.pop('bytes', 0))}, fingerprint "
              f"{src.pop('fingerprint', '?')}, converter v{src.pop('converter_version', '?')})"
              + (f", prepared {info['prepared_at']}" if info.get("prepared_at") else ""))
    if src:
        print("source: " + ", ".join(f"{k}={v}" for k, v in src.items()))
    if info.get("converter_report"):
        print("converter report: " + json.dumps(info["converter_report"], sort_keys=True))


def cmd_prepare(args) -> int:
    from pathlib import Path

    from shala_bench.data.sources import verify
    from shala_bench.errors import DataError

    entry, protocol = _protocol(args)
    if entry.prepare is None:
        raise DataError(f"dataset {entry.name} is not built from local files and needs no preparing; "
                        f"`shala-bench run --dataset {entry.name}` builds its cache itself")
    checked = verify(entry.name, entry.source, Path(args.root)) if Path(args.root).is_dir() else []
    try:
        info = entry.prepare(args.root, protocol, None, not args.no_progress)
    except DataError as e:
        raise DataError(f"{e} (what to download and how to lay it out: `shala-bench data prepare {entry.name} "
                        "--help`)") from None
    print(f"{'converted' if info.get('built') else 'already prepared (cache reused)'}: {entry.name}")
    for line in checked:
        print(f"verified {line}")
    _print_info(info)
    return 0


def cmd_sources(args) -> int:
    from shala_bench.data.sources import describe
    from shala_bench.registry import get_registry

    reg = get_registry()
    names = [args.name] if args.name else list(reg.datasets)
    blocks = [describe(n, reg.get_dataset(n).source) for n in names]
    print("\n\n".join(blocks))
    return 0


class _DatasetHelp(argparse.Action):
    """-h/--help of `data prepare`: the generic usage, then where NAME's files come from (when NAME was given)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from shala_bench.data.sources import describe
        from shala_bench.registry import get_registry

        parser.print_help()
        name = getattr(namespace, "name", None)
        reg = get_registry()
        print()
        if name in reg.datasets:
            print("where to get it:\n" + describe(name, reg.get_dataset(name).source))
        else:
            print("datasets: " + ", ".join(reg.datasets) + "; `shala-bench data prepare NAME --help` says where "
                  "NAME's files come from (or `shala-bench data sources`)")
        parser.exit()


def cmd_info(args) -> int:
    from shala_bench.data.prepare import describe

    entry, protocol = _protocol(args)
    print(f"profile: {protocol.profile} (protocol {protocol.short_hash})")
    if entry.info is not None:
        info = entry.info(protocol, None)
    else:  # a dataset generated from packaged data: its loader builds or reads the cache
        data = entry.loader(protocol, None)
        info = describe(data.spec, data.splits, data.cache_path, data.source)
    _print_info(info)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="dataset name (see `shala-bench list datasets`)")
    p.add_argument("--profile", default="quick", help="protocol profile whose data settings apply (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a recipe or dataset setting, e.g. ntu120.frames=64 (repeatable)")


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare a dataset from its official files; show a dataset's cache",
                       description="Datasets that cannot be downloaded are converted once from a local copy in "
                                   "their official format into the Arrow cache ($SHALA_BENCH_CACHE, default "
                                   "~/.cache/shala-bench).")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = dsub.add_parser("prepare", help="convert NAME from the files under --root into the cache (with a progress bar)",
                           description="Convert dataset NAME from its official files under --root. Preparing the "
                                       "same files again reuses the cache; a changed source or converter rebuilds it. "
                                       "Checks the layout first, and the source's published checksums where it "
                                       "ships a list. `data prepare NAME --help` says where NAME comes from.",
                           add_help=False)
    prep.add_argument("-h", "--help", action=_DatasetHelp, help="show this help and where NAME's files come from")
    _common(prep)
    prep.add_argument("--root", required=True, help="folder holding the dataset's official files")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_prepare)
    info = dsub.add_parser("info", help="modalities, shapes, split sizes, cache path and source of NAME",
                           description="Show what a run of NAME under --profile loads: modalities, shapes, split "
                                       "sizes, the cache folder and the source it was built from.")
    _common(info)
    info.set_defaults(func=cmd_info)
    src = dsub.add_parser("sources", help="where each dataset comes from: URL, files, layout, licence, size, checksums",
                          description="Per dataset: where to obtain it, the exact files and the folder layout "
                                      "--root must have, licence and access (MIMIC-CXR: PhysioNet credentials), "
                                      "size, and the checksums the source publishes.")
    src.add_argument("name", nargs="?", help="only this dataset")
    src.set_defaults(func=cmd_sources)
