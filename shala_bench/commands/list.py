"""`shala-bench list`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_list(args) -> int:
    from tabulate import tabulate

    from shala_bench.registry import get_registry

    reg = get_registry()
    kinds = [args.kind] if args.kind else ["models", "datasets", "metrics"]
    for kind in kinds:
        table = reg.list(kind, args.pattern)
        rows = [[name, r.source, r.entry.description] for name, r in table.items()]
        print(f"{kind}:")
        print(tabulate(rows, headers=["name", "from", "description"], tablefmt="simple", maxcolwidths=[None, None, 90])
              if rows else "  (none)")
        print()
    for plugin, why in reg.unavailable():
        print(f"not available: {plugin}: {why}")
    return 0

def add_parser(sub) -> None:
    p = sub.add_parser("list", help="registered models, datasets and metrics, with the plugin each comes from",
                       description="List what the installed plugins register (built-ins come through the same "
                               "entry-point group `shala_bench` a third party uses).")
    p.add_argument("kind", nargs="?", choices=["models", "datasets", "metrics"], help="only this kind")
    p.add_argument("--pattern", default="*", help="shell-style filter on names, e.g. '*vae*'")
    p.set_defaults(func=cmd_list)
