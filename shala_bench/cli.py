"""The `shala-bench` command line. Every user mistake is one line on stderr and exit code 2.

Each subcommand lives in ``shala_bench/commands/<name>.py`` with an ``add_parser(sub)``.
"""

from __future__ import annotations

import os

# Before anything imports torch (building the parser does): OpenMP threads that wait for work sleep instead
# of spinning. Spinning threads on a machine whose cores other processes also use stall every parallel region
# (measured: 2 threads 10-20x slower than 1 on a 2-core machine with one core busy). An explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

from shala_bench.errors import ShalaBenchError  # noqa: E402

# Order of `--help`.
COMMANDS = ["run", "config", "eval", "reproduce", "list", "compare", "leaderboard", "data", "sweep", "status", "cancel"]

EPILOG = """examples:
  shala-bench list
  shala-bench run --model mvae                      # polymnist-synth, quick profile, seed 0
  shala-bench run --model mvae --profile smoke --set max_train_samples=640 --seed 1
  shala-bench config --model mopoe --set mopoe.beta=2.5   # resolved settings, where each came from
  shala-bench compare                               # tables of every record under runs/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shala-bench",
        description="Train and evaluate multimodal VAEs (ShaLa, MVAE, MMVAE, MoPoE, MMVAE+) under one versioned "
                    "protocol; write run records; build leaderboards from them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"shala_bench.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ShalaBenchError as e:
        if args.debug:
            raise
        print(f"shala-bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shala-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
