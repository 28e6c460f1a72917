"""A session fixture that brings up the real single-node SLURM test cluster, or skips with why.

The cluster (munged, MariaDB + slurmdbd, slurmctld, slurmd; partition `debug`) is started by
``../shared/slurm/start-test-cluster.sh`` beside this repository (override the folder with
$SHALA_BENCH_SLURM_SCRIPTS). When the fixture started it, it stops it at the end of the
session; a cluster that was already up (CI starts it in .ci/run) is left running.
Only the tests that use this fixture skip when the daemons cannot start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(os.environ.get("SHALA_BENCH_SLURM_SCRIPTS", Path(__file__).resolve().parents[2] / "shared" / "slurm"))
REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm" / "test-cluster.toml"


def _cluster_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "UP" in out


def _skip(reason: str):
    print(f"\nSLURM tests skipped: {reason}")
    pytest.skip(f"SLURM test cluster unavailable: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The test cluster's profile path; starts the cluster if it is not up."""
    started_here = False
    if not _cluster_up():
        start = SCRIPTS / "start-test-cluster.sh"
        if not start.is_file():
            _skip(f"{start} not found")
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            _skip("start-test-cluster.sh must run as root")
        try:
            proc = subprocess.run(["bash", str(start)], capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            _skip(f"{start.name} did not finish in 15 minutes")
        if proc.returncode != 0 or not _cluster_up():
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            _skip(f"{start.name} exited {proc.returncode}: {lines[-1] if lines else 'no output'}")
        started_here = True
    yield PROFILE
    if started_here:
        subprocess.run(["bash", str(SCRIPTS / "stop-test-cluster.sh")], capture_output=True, timeout=300)
