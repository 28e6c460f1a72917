"""Sample grids: what the numbers are about, one PNG each, saved beside the record.

- ``samples_joint.png``: unconditional samples, one row per sample (`GRID_ROWS`), one
  column per image modality.
- ``samples_cross.png``: cross-modal generation for one test tuple. The first row is the
  real tuple; then one row per source subset S (the coherence subsets, by size k): a
  modality in S shows its observed image in a green frame, the others are generated from
  x_S (grey frame).

Each cell is the image at its native resolution inside a `PAD`-pixel frame, so a grid of
R rows and C columns of H x W images is (R (H + 2 PAD)) x (C (W + 2 PAD)) pixels. Only
image modalities are drawn. Paths (relative to the run folder) go into the record's
``artifacts``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from shala_bench.hookspecs import hookimpl
from shala_bench.registry import MetricEntry, MetricKey

GRID_ROWS = 8
PAD = 2
OBSERVED = (40, 170, 60)  # frame of an observed (given) modality
GENERATED = (128, 128, 128)


def tile(cells: list[list[Tensor]], frames: list[list[tuple[int, int, int]]] | None = None) -> np.ndarray:
    """Rows of float images (C, H, W) in [0, 1], C in {1, 3} -> one (H', W', 3) uint8 array."""
    R, C = len(cells), len(cells[0])
    H, W = cells[0][0].shape[-2:]
    h, w = H + 2 * PAD, W + 2 * PAD
    out = np.zeros((R * h, C * w, 3), dtype=np.uint8)
    for r in range(R):
        for c in range(C):
            img = cells[r][c].detach().float().cpu().clamp(0, 1)
            img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
            frame = frames[r][c] if frames else GENERATED
            out[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.array(frame, dtype=np.uint8)
            out[r * h + PAD:r * h + PAD + H, c * w + PAD:c * w + PAD + W] = (
                img.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return out


def save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def sample_grids(ctx) -> dict:
    from shala_bench.metrics.coherence import subsets_by_size

    model, spec = ctx.model, ctx.data.spec
    images = [m for m in model.modalities if spec.modality(m).kind == "image"]
    if not images:
        return {"grids_unavailable": f"no image modality in {spec.name}"}
    shapes = {spec.modality(m).shape[-2:] for m in images}
    if len(shapes) > 1:  # one grid needs one cell size
        images = [m for m in images if spec.modality(m).shape[-2:] == spec.modality(images[0]).shape[-2:]]

    joint = model.sample(GRID_ROWS)
    save_png(tile([[joint[m][i] for m in images] for i in range(GRID_ROWS)]), ctx.run_dir / "samples_joint.png")
    ctx.artifacts["samples_joint"] = "samples_joint.png"

    x, _ = next(ctx.batches(ctx.test(1)))
    rows, frames = [[x[m][0] for m in images]], [[OBSERVED] * len(images)]
    if len(model.modalities) > 1:
        p = ctx.protocol
        for subsets in subsets_by_size(model.modalities, p.max_subsets_per_k, p.data_seed).values():
            for S in subsets:
                targets = [m for m in model.modalities if m not in S]
                out = model.generate({m: x[m] for m in S}, targets)
                rows.append([x[m][0] if m in S else out[m][0] for m in images])
                frames.append([OBSERVED if m in S else GENERATED for m in images])
    save_png(tile(rows, frames), ctx.run_dir / "samples_cross.png")
    ctx.artifacts["samples_cross"] = "samples_cross.png"
    return {}


@hookimpl
def shala_bench_register_metrics():
    return [MetricEntry("grids", sample_grids,
                        "PNG grids of joint samples (rows = samples) and cross-modal generation (a row per source "
                        "subset), saved beside the record", 90,
                        keys=(MetricKey("grids_unavailable", None, "why no grid was drawn"),))]
