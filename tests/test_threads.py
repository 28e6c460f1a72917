"""Thread defaults: the CPUs this process may use and that others are not busy on; OpenMP waits passively."""

from __future__ import annotations

import os
import subprocess
import sys

from shala_bench import executors


def test_default_threads_use_the_affinity_mask_minus_busy_cpus_split_among_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert executors.usable_cpus() == 4 and executors.default_threads() == 4 and executors.default_threads(2) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))  # one core busy elsewhere
    assert executors.default_threads() == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))  # a loaded host: still one thread
    assert executors.default_threads() == 1 and executors.default_threads(8) == 1
    assert executors.LocalExecutor(workers=2).threads == 2 and executors.LocalExecutor(2, threads=1).threads == 1


def test_the_cli_makes_openmp_wait_passively_before_torch_loads():
    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None); import shala_bench.cli, sys; "
            "assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "PASSIVE"
    kept = subprocess.run([sys.executable, "-c", "import shala_bench.cli, os; print(os.environ['OMP_WAIT_POLICY'])"],
                          capture_output=True, text=True, env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, check=True).stdout
    assert kept.strip() == "ACTIVE"
