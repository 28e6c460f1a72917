"""The golden record: the metrics of one smoke cell per built-in model, on a CPU with one torch thread, seed 0.

`tests/test_golden.py` re-runs each cell and compares with `smoke.json`; `update.py` rewrites that file.
Both call `smoke_metrics` below, so they always run the very same cells.

Tolerance: |new - golden| <= ABS_TOL + REL_TOL * |golden| for every numeric metric. On one machine a cell is
bit-for-bit reproducible (one thread, seeded); the slack only absorbs another CPU's float kernels. The latent
probe's accuracies (`probe_*`) may also differ by one test tuple (1 / probe_n_test): a logistic regression
refitted on encodings that differ in the last bits can flip one near-tie prediction, as it did between the
CPU that wrote smoke.json and an AMD EPYC (probe_m1 0.34375 -> 0.359375, every other metric inside the
tolerance).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).with_name("smoke.json")
REL_TOL = 1e-3
ABS_TOL = 1e-6
SEED = 0
THREADS = 1  # the thread count changes CPU numbers (reduction order), so it is pinned


def builtin_models() -> list[str]:
    """The models this repository implements: registered by shala-bench itself, less the `multivae/*` models of
    the optional adapter (MultiVae's code, registered only where the extra is installed: not ours to pin)."""
    from shala_bench.registry import get_registry

    return sorted(n for n, r in get_registry().models.items()
                  if r.source.startswith("shala-bench ") and not n.startswith("multivae/"))


def smoke_metrics(model: str, cache_dir: str | None = None) -> dict[str, float]:
    """The numeric metrics of `shala-bench run --model MODEL --profile smoke --seed 0 --device cpu --threads 1`."""
    import torch

    from shala_bench.launch import RunSpec, run_one

    before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as d:
            rec = run_one(RunSpec(model=model, profile="smoke", seed=SEED, results=d, device="cpu", progress=False,
                                  threads=THREADS, cache_dir=cache_dir))
    finally:
        torch.set_num_threads(before)
    assert rec.ok, rec.status
    return {k: float(v) for k, v in sorted(rec.metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def differences(golden: dict[str, float], new: dict[str, float]) -> list[str]:
    """One line per metric outside the tolerance, missing or new."""
    out = []
    for k in sorted(set(golden) | set(new)):
        if k not in new:
            out.append(f"{k}: golden {golden[k]:.6g}, now missing")
        elif k not in golden:
            out.append(f"{k}: new metric {new[k]:.6g}, not in the golden record")
        elif abs(new[k] - golden[k]) > ABS_TOL + REL_TOL * abs(golden[k]) + item_slack(k, golden):
            out.append(f"{k}: golden {golden[k]:.6g}, now {new[k]:.6g}")
    return out


def item_slack(metric: str, golden: dict[str, float]) -> float:
    """One test tuple of a probe accuracy (see the module docstring); 0 for every other metric."""
    n = golden.get("probe_n_test")
    if metric.startswith("probe_") and not metric.startswith("probe_n_") and n:
        return 1.0 / n
    return 0.0


def load() -> dict:
    return json.loads(GOLDEN.read_text())


def write(models: dict[str, dict[str, float]]) -> None:
    import torch

    from shala_bench.protocol import NUMBERS_VERSION

    doc = {"numbers_version": NUMBERS_VERSION, "profile": "smoke", "seed": SEED, "threads": THREADS,
           "device": "cpu", "torch": torch.__version__, "rel_tol": REL_TOL, "abs_tol": ABS_TOL,
           "regenerate": "python tests/golden/update.py", "models": models}
    GOLDEN.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
