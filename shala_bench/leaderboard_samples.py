"""The sample grids on a leaderboard page: per M, one row per model with the joint and the cross-modal grid
its run wrote (shala_bench.metrics.grids: `samples_joint.png`, `samples_cross.png`, named in the record's
``artifacts``), read from beside the collected records, where `leaderboard --collect` copies them.

The images are linked at their native size (each digit cell is the dataset's own resolution inside a thin
frame), so a digit can be read on the page; one seed per model (the lowest that has both grids), since the
grids show what the numbers are about, not a statistic.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pandas as pd

# artifact key -> column header
GRIDS = {"samples_joint": "joint samples (unconditional; a row per sample, a column per modality)",
         "samples_cross": "cross-modal (row 1 the test tuple; then one row per given subset, given in green)"}


def grid_files(artifacts) -> dict[str, str]:
    """artifact key -> file name, for the grids a record names as plain file names beside it (anything else, a
    path that leaves the run folder, is not a grid the page can show)."""
    if not isinstance(artifacts, dict):
        return {}
    out = {}
    for key in GRIDS:
        name = artifacts.get(key)
        if isinstance(name, str) and name and PurePosixPath(name).name == name and name.endswith(".png"):
            out[key] = name
    return out


def copy_grids(src_dir: Path, dest_dir: Path, artifacts, copy) -> None:
    """Copy a run's grids from its folder to the collected record's, with `copy(src, dest)` (copies if changed)."""
    for name in grid_files(artifacts).values():
        if (Path(src_dir) / name).is_file():
            copy(Path(src_dir) / name, Path(dest_dir) / name)


def grids_json(artifacts) -> str:
    """The frame column: the record's grid files as canonical JSON ("" when it has none)."""
    files = grid_files(artifacts)
    return json.dumps(files, sort_keys=True) if files else ""


def sample_grid_lines(part: pd.DataFrame, M: int, root: Path | None, rel: str) -> list[str]:
    """The Markdown of the sample-grid table at one M: a row per model (entry) whose lowest seed has its grids
    under `root` (<root>/<dataset>/<model>/<run_id>/), linked as `rel`/<dataset>/<model>/<run_id>/<file> from the
    page; [] when no run has them."""
    from shala_bench.leaderboards import _github

    if root is None or "grids" not in part:
        return []
    rows = []
    for entry, g in part.sort_values(["entry", "seed"], kind="stable").groupby("entry", sort=True):
        for r in g.itertuples():
            files = json.loads(r.grids) if isinstance(r.grids, str) and r.grids else {}
            where = Path(root) / r.dataset / r.model / r.run_id
            if files and all((where / f).is_file() for f in files.values()):
                link = f"{rel}/{r.dataset}/{r.model}/{r.run_id}"
                rows.append([entry, str(r.seed)] + [f"![{entry} {key}, seed {r.seed}]({link}/{files[key]})"
                                                    if key in files else "–" for key in GRIDS])
                break
    if not rows:
        return []
    return [f"Sample grids (M = {M}): one seed of each model, the images at their native size.", "",
            _github(rows, ["model", "seed", *GRIDS.values()]), ""]
