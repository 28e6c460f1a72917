"""Run records: one JSON per (model, dataset, seed, n_modalities, protocol), written atomically.

Layout: ``<results>/<dataset>/<model>/<run_id>/record.json`` with the checkpoint and
sample grids beside it. Leaderboards are generated from these files only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from shala_bench.errors import RecordError

RECORD = "record.json"
RECORD_VERSION = 1


@dataclass
class RunRecord:
    run_id: str
    model: str
    dataset: str
    seed: int
    n_modalities: int
    profile: str
    protocol_hash: str
    protocol: dict
    status: str  # "ok" | "failed: <reason>" | "running"
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    n_params: int = 0
    hardware: dict = field(default_factory=dict)
    git_commit: str = ""
    versions: dict = field(default_factory=dict)
    checkpoint: str = ""
    artifacts: dict = field(default_factory=dict)
    restarts: int = 0
    created: str = ""
    record_version: int = RECORD_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def run_id(seed: int, n_modalities: int, protocol_hash: str) -> str:
    return f"seed{seed}-M{n_modalities}-{protocol_hash[:12]}"


def run_dir(results: Path, dataset: str, model: str, rid: str) -> Path:
    return Path(results) / dataset / model / rid


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_record(record: RunRecord, folder: Path) -> Path:
    path = Path(folder) / RECORD
    atomic_write_text(path, record.to_json() + "\n")
    return path


def read_record(path: Path) -> RunRecord:
    try:
        return RunRecord.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise RecordError(f"cannot read run record {path}: {e}") from None


def load_records(results: Path) -> list[RunRecord]:
    results = Path(results)
    if not results.exists():
        raise RecordError(f"results folder {results} does not exist (run `shala-bench run` first, or pass --results)")
    return [read_record(p) for p in sorted(results.rglob(RECORD))]


# ---------------------------------------------------------------- provenance
def git_commit() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if out.returncode == 0 and commit:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("shala-bench", "torch", "torchvision", "torchmetrics", "torch-fidelity", "datasets", "pluggy",
                 "scikit-learn", "numpy", "submitit"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(device) -> dict:
    import torch

    hw = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION"):
        if var in os.environ:
            hw[var.lower()] = os.environ[var]
    return hw


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
