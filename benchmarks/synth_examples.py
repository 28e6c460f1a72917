"""A picture of polymnist-synth tuples: one row per tuple, one column per modality (a look, not a test).

    python benchmarks/synth_examples.py --version 2 --out benchmarks/results/polymnist_synth_v2.png

Each row is one training tuple (M images of the same digit, each a different handwriting instance on
its modality's texture), upscaled 4x with nearest neighbours; the row's label is written at its left.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shala_bench.data import polymnist_synth as ps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, default=2, choices=ps.VERSIONS)
    ap.add_argument("--M", type=int, default=5)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zoom", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/polymnist_synth_v2.png"))
    args = ap.parse_args()

    split = ps.build(args.M, args.seed, args.rows, 1, 1, args.version)["train"]
    z, pad, left = 28 * args.zoom, 4, 24
    canvas = Image.new("RGB", (left + args.M * (z + pad), args.rows * (z + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r in range(args.rows):
        draw.text((6, r * (z + pad) + z // 2 - 6), str(int(split.labels[r])), fill="black")
        for m in range(args.M):
            img = split.data[f"m{m}"][r].permute(1, 2, 0).numpy().astype(np.uint8)  # (28, 28, 3)
            tile = Image.fromarray(img).resize((z, z), Image.NEAREST)
            canvas.paste(tile, (left + m * (z + pad), r * (z + pad)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
