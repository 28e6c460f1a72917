"""Regenerate tests/golden/smoke.json: `python tests/golden/update.py [MODEL ...]` (all built-in models by default).

Run it in the same commit that bumps `shala_bench.protocol.NUMBERS_VERSION`, after a change that moves the
numbers on purpose (a model's maths, a backbone, the trainer's step, a metric). It takes about a minute on a
2-core CPU and uses a temporary cache, so cached classifiers from older code cannot leak into the values.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str]) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import golden

    from shala_bench.protocol import NUMBERS_VERSION

    models = argv or golden.builtin_models()
    old = golden.load()["models"] if golden.GOLDEN.exists() else {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["SHALA_BENCH_CACHE"] = cache
        new = {**old, **{m: golden.smoke_metrics(m, cache) for m in models}}
    for m in models:
        diff = golden.differences(old.get(m, {}), new[m]) if m in old else ["(new)"]
        print(f"{m}: {len(diff)} change(s)" + "".join(f"\n  {d}" for d in diff[:8]))
    golden.write({m: new[m] for m in sorted(new) if m in golden.builtin_models()})
    print(f"wrote {golden.GOLDEN} for numbers_version {NUMBERS_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
