"""Before/after training throughput of two checkouts, measured in one run, alternating (a benchmark).

    git worktree add ../old <commit> && python -m venv --system-site-packages ../venv-old \
        && ../venv-old/bin/pip install --no-deps -e ../old
    python benchmarks/compare_commits.py --old-python ../venv-old/bin/python \
        --models mvae,mmvae,mopoe,mmvae+,shala --modalities 5,8 --batch 32,256 --threads 1,2

Each round runs `benchmarks/throughput.py` (this checkout's file, which uses only the
harness's stable API) once under the old interpreter and once under the new one, in
alternating order, so both share the machine's noise; the table gives the median over
rounds of each side's Trainer samples/s and the ratio new / old, by wall time and per
CPU-second of the process (the steadier of the two on a shared machine). The interpreter decides
which checkout is imported (each venv has its own editable install).
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent


def one_run(python: str, args, threads: int, out: Path) -> list[dict]:
    cmd = [python, str(HERE / "throughput.py"), "--models", args.models, "--modalities", args.modalities,
           "--batch", args.batch, "--threads", str(threads), "--trials", "1", "--no-peak", "--json", str(out)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.large_batch_steps:
        cmd += ["--large-batch-steps", str(args.large_batch_steps)]
    # run from a neutral folder so the interpreter's own editable install decides which checkout is imported
    subprocess.run(cmd, check=True, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.read_text())["cells"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-python", required=True, help="interpreter whose editable install is the old checkout")
    ap.add_argument("--new-python", default=sys.executable, help="interpreter of the new checkout (default: this one)")
    ap.add_argument("--models", default="mvae,mmvae,mopoe,mmvae+,shala")
    ap.add_argument("--modalities", default="5,8")
    ap.add_argument("--batch", default="32,256")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts")
    ap.add_argument("--steps", type=int, default=0, help="steps per measurement at batch <= 64 (default: throughput.py's)")
    ap.add_argument("--large-batch-steps", type=int, default=0, help="steps per measurement at batch > 64 (default: "
                    "throughput.py's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the table's numbers here")
    args = ap.parse_args()

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            got = {"old": [], "new": []}
            for r in range(args.rounds):
                order = ("old", "new") if r % 2 == 0 else ("new", "old")
                for side in order:
                    python = args.old_python if side == "old" else args.new_python
                    got[side].append(one_run(python, args, threads, Path(tmp) / f"{side}.json"))
                    print(f"threads={threads} round {r + 1}/{args.rounds} {side} done", file=sys.stderr, flush=True)
            for i, cell in enumerate(got["new"][0]):
                med = lambda side, key: statistics.median(run[i].get(key, float("nan")) for run in got[side])
                old, new = med("old", "trainer_samples_per_s"), med("new", "trainer_samples_per_s")
                old_c, new_c = med("old", "trainer_samples_per_cpu_s"), med("new", "trainer_samples_per_cpu_s")
                over = med("new", "harness_overhead_cpu")
                rows.append([cell["model"], cell["M"], cell["batch"], threads, f"{old:.1f}", f"{new:.1f}",
                             f"{new / old:.2f}x", f"{old_c:.1f}", f"{new_c:.1f}", f"{new_c / old_c:.2f}x",
                             f"{over * 100:.1f} %"])
                raw.append({"model": cell["model"], "M": cell["M"], "batch": cell["batch"], "threads": threads,
                            "old_samples_per_s": old, "new_samples_per_s": new, "ratio": new / old,
                            "old_samples_per_cpu_s": old_c, "new_samples_per_cpu_s": new_c,
                            "ratio_cpu": new_c / old_c, "new_harness_overhead_cpu": over})
    print(tabulate(rows, headers=["model", "M", "batch", "threads", "old samples/s", "new samples/s", "new / old",
                                  "old per CPU-s", "new per CPU-s", "new / old (CPU)", "overhead (new, CPU)"],
                   tablefmt="github"))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
