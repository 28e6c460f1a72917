"""The quick profile's recipe study: validation learning curves at the field's PolyMNIST recipe (a benchmark).

    python benchmarks/recipe_study.py run --only mopoe-v2-scale0.75-beta2.5-bs128   # the points not yet measured
    python benchmarks/recipe_study.py run                              # every point, in order (resumable)
    python benchmarks/recipe_study.py report                           # table.md + k1.png from what exists

Question (issue 14, protocol v2): at the field's recipe (Laplace scale 0.75, beta 2.5, as MoPoE's and
MMVAE+'s PolyMNIST runs), does every model leave chance and plateau within ~3e5 training samples on one
CPU core, and at which batch size and learning rate? Each point of the grid is one
`benchmarks/learning_curve.py` run (M = 5, seed 0, one thread, the quick profile otherwise) scored on
VALIDATION tuples only; its JSON lines go to `benchmarks/results/recipe_study/<point>.jsonl`, written
as `<point>.jsonl.part` and renamed when the run ends, so `run` skips finished points and redoes an
interrupted one. Points run one at a time.

The grid, in the order it is run: MoPoE on polymnist-synth v1 and v2 (the data comparison), MoPoE's
learning rate and batch on the better version, then MVAE and MMVAE at MoPoE's best point ("best":
the highest mean val k=1 coherence over its last two checkpoints; MMVAE is ~3x MoPoE's cost per
sample). `report` renders a Markdown table and a PNG (val k=1 coherence against samples, one line
per point) beside the JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "recipe_study"
CHANCE = 0.1  # 10 digit classes
SAMPLES = 300_000  # the budget in question
EVAL_SAMPLES = 38_400  # a checkpoint every 150 steps at batch 256
FIELD = dict(likelihood_scale=0.75, beta=2.5)  # MoPoE / MMVAE+ PolyMNIST


@dataclass(frozen=True)
class Point:
    name: str
    model: str
    synth_version: int
    batch_size: int | None  # None: MoPoE's best point's
    lr: float | None

    def resolved(self, best: "Point | None") -> "Point":
        if self.batch_size is not None:
            return self
        if best is None:
            raise SystemExit(f"error: {self.name} runs at MoPoE's best point; measure the MoPoE points first")
        return Point(self.name, self.model, self.synth_version, best.batch_size, best.lr)

    @property
    def steps(self) -> int:
        return SAMPLES // self.batch_size

    @property
    def every(self) -> int:
        return EVAL_SAMPLES // self.batch_size


DATA_POINTS = [Point("mopoe-v1-scale0.75-beta2.5-bs256-lr0.001", "mopoe", 1, 256, 1e-3),
               Point("mopoe-v2-scale0.75-beta2.5-bs256-lr0.001", "mopoe", 2, 256, 1e-3)]
RECIPE_POINTS = [Point("mopoe-v2-scale0.75-beta2.5-bs256-lr0.0005", "mopoe", 2, 256, 5e-4),
                 Point("mopoe-v2-scale0.75-beta2.5-bs128-lr0.001", "mopoe", 2, 128, 1e-3)]
MODEL_POINTS = [Point("mvae-v2-scale0.75-beta2.5-best", "mvae", 2, None, None),
                Point("mmvae-v2-scale0.75-beta2.5-best", "mmvae", 2, None, None)]
GRID = DATA_POINTS + RECIPE_POINTS + MODEL_POINTS


def read(point: Point, partial: bool = False) -> list[dict]:
    path = OUT / f"{point.name}.jsonl"
    if not path.exists() and partial:
        path = OUT / f"{point.name}.jsonl.part"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def tail_k1(rows: list[dict]) -> float:
    return sum(r["k1"] for r in rows[-2:]) / len(rows[-2:])


def best_mopoe() -> Point | None:
    """MoPoE's best measured point on v2 (the data version the study settled on)."""
    done = [(tail_k1(rows), p) for p in DATA_POINTS + RECIPE_POINTS if p.synth_version == 2 and (rows := read(p))]
    return max(done, key=lambda t: t[0])[1] if done else None


def run(points: list[Point]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for point in points:
        if read(point):
            print(f"{point.name}: done", flush=True)
            continue
        p = point.resolved(best_mopoe())
        sets = {**FIELD, "batch_size": p.batch_size, "lr": p.lr, "polymnist-synth.version": p.synth_version}
        cmd = [sys.executable, str(HERE / "learning_curve.py"), "--model", p.model, "--seed", "0",
               "--steps", str(p.steps), "--every", str(p.every), "--eval-n", "500", "--split", "val",
               "--threads", "1"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        print(f"{point.name}: " + " ".join(cmd[1:]), flush=True)
        part = OUT / f"{point.name}.jsonl.part"
        with part.open("w") as f:
            subprocess.run(cmd, stdout=f, env=env, check=True)
        part.rename(OUT / f"{point.name}.jsonl")


def _plateau(rows: list[dict], tol: float = 0.02) -> int | None:
    """Samples at the first checkpoint above chance after which val k=1 coherence never gains more than
    `tol` (a curve flat at chance has not plateaued: it has not started)."""
    for i, r in enumerate(rows):
        if r["k1"] > 2 * CHANCE and all(later["k1"] <= r["k1"] + tol for later in rows[i + 1:]) and i < len(rows) - 1:
            return r["samples"]
    return None


def report() -> None:
    best = best_mopoe()
    lines = ["# Recipe study: validation learning curves at the field's recipe (Laplace scale 0.75, beta 2.5)", "",
             "Generated by `benchmarks/recipe_study.py report` from the JSONL beside it. polymnist-synth, M = 5, "
             "seed 0, one thread; conditional coherence on 500 validation tuples (plain accuracy of the "
             f"harness's classifiers on the generated modalities, mean over subsets of size k; chance {CHANCE}); "
             "joint: the raw agreement of the classifiers over joint samples (not chance-corrected: a collapsed "
             "model scores high). *left chance*: samples at the first checkpoint with val k=1 > "
             f"{2 * CHANCE}; *plateau*: samples at the first checkpoint past chance after which val k=1 "
             "never gains more "
             "than 0.02 (— : still rising at the last checkpoint). CPU s: the training process's CPU seconds "
             "(evaluation excluded). `(unfinished)`: a point stopped or still running (its `.jsonl.part`; "
             "`run` redoes it from the start).", "",
             "| point | model | data | batch | lr | samples | val k=1 | val k=4 | joint | left chance | plateau | "
             "CPU s | samples/CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    series = {}
    for point in GRID:
        rows, running = read(point), False
        if not rows:
            rows, running = read(point, partial=True), True
        if not rows:
            continue
        p = point.resolved(best) if point.batch_size is None and best else point
        last = rows[-1]
        left = next((r["samples"] for r in rows if r["k1"] > 2 * CHANCE), None)
        plateau = None if running else _plateau(rows)
        label = point.name + (" (unfinished)" if running else "")
        lines.append(f"| {label} | {p.model} | v{p.synth_version} | {p.batch_size} | {p.lr:g} | {last['samples']:,} | "
                     f"{last['k1']:.3f} | {last['k4']:.3f} | {last['joint']:.3f} | "
                     f"{'—' if left is None else f'{left:,}'} | {'—' if plateau is None else f'{plateau:,}'} | "
                     f"{last['train_cpu_s']:.0f} | {last['samples'] / max(last['train_cpu_s'], 1e-9):.0f} |")
        series[point.name] = ([r["samples"] for r in rows], [r["k1"] for r in rows], [float("nan")] * len(rows))
    lines += ["", "val k=1 coherence at each checkpoint (samples: k1):", ""]
    for point in GRID:
        rows = read(point) or read(point, partial=True)
        if rows:
            lines.append(f"- {point.name}: " + ", ".join(f"{r['samples']:,}: {r['k1']:.3f}" for r in rows))
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    from shala_bench.plots import line_plot

    line_plot(OUT / "k1.png", series, xlabel="training samples", ylabel="val coherence, k = 1",
              title="polymnist-synth M=5 seed 0, Laplace scale 0.75, beta 2.5", chance=CHANCE)
    print(OUT / "table.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("run", "report"))
    ap.add_argument("--only", action="append", default=[], help="a point's name (or a prefix of it); repeatable")
    args = ap.parse_args()
    if args.command == "report":
        return report()
    points = [p for p in GRID if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not points:
        raise SystemExit("error: no point matches --only; the points are: " + ", ".join(p.name for p in GRID))
    run(points)


if __name__ == "__main__":
    main()
