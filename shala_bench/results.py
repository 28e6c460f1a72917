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
CURVES = "curves.csv"  # beside record.json: one row per log (and evaluation) step of the run
RECORD_VERSION = 2  # 2: protocol v2 (config, config_hash; converged, train_samples, best_step, train_flops, stages)


@dataclass
class RunRecord:
    run_id: str
    model: str
    dataset: str
    seed: int
    n_modalities: int
    profile: str
    protocol_hash: str  # the recipe hash: what is ranked together
    protocol: dict  # the recipe (the shared settings)
    status: str  # "ok" | "failed: <reason>" | "running"
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    n_params: int = 0
    hardware: dict = field(default_factory=dict)
    git_commit: str = ""
    versions: dict = field(default_factory=dict)
    checkpoint: str = ""  # the evaluated checkpoint, relative to the record: best.pt (older records: checkpoint.pt)
    artifacts: dict = field(default_factory=dict)
    restarts: int = 0
    config: dict = field(default_factory=dict)  # the model's own settings
    config_hash: str = ""  # sha256 hex of the config's canonical JSON
    created: str = ""
    record_version: int = RECORD_VERSION
    # training to a plateau (issue 14; records before it lack these): whether every stage converged (stopped on
    # patience, or its best evaluation came >= patience evaluations before its budget ran out; None: patience 0
    # or no validation), the training samples seen, each stage's best step, the training FLOPs (one step counted
    # by torch's FlopCounterMode, times the steps), and each stage's summary (trainer.Trainer._finish_stage)
    converged: bool | None = None
    train_samples: int = 0
    best_step: dict = field(default_factory=dict)
    train_flops: float = 0.0
    stages: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def run_id(seed: int, n_modalities: int, protocol_hash: str, config_hash: str = "") -> str:
    """seed<s>-M<M>-<recipe hash, 12>[-<config hash, 8>] (records before protocol v2 have no config hash)."""
    return f"seed{seed}-M{n_modalities}-{protocol_hash[:12]}" + (f"-{config_hash[:8]}" if config_hash else "")


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
        d = json.loads(Path(path).read_text())
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        return RunRecord.from_dict(d)
    except (OSError, ValueError, TypeError) as e:
        raise RecordError(f"cannot read run record {path}: {e}") from None


def protocol_digest(protocol: dict) -> str:
    """sha256 of a recorded protocol's canonical JSON: what its `protocol_hash` must be (as Protocol.hash)."""
    import hashlib

    return hashlib.sha256(json.dumps(protocol, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def inconsistency(rec: RunRecord) -> str | None:
    """Why a record cannot be trusted as what it says it is, or None: its stored hash must be the hash of its
    stored protocol (an edited protocol, e.g. another protocol_version, would otherwise be merged as the old)."""
    if not isinstance(rec.protocol, dict) or not isinstance(rec.protocol_hash, str):
        return "its protocol or protocol_hash is missing"
    if not isinstance(rec.metrics, dict):
        return "its metrics are not a mapping"
    digest = protocol_digest(rec.protocol)
    if digest != rec.protocol_hash:
        return (f"its protocol_hash {rec.protocol_hash[:12]} is not the hash of its protocol ({digest[:12]}): "
                "the record was edited or is corrupt")
    if rec.config_hash or rec.config:
        if not isinstance(rec.config, dict) or protocol_digest(rec.config) != rec.config_hash:
            return "its config_hash is not the hash of its config: the record was edited or is corrupt"
    return None


def _warn(line: str) -> None:
    import sys

    print(f"shala-bench: warning: {line}", file=sys.stderr, flush=True)


def iter_record_files(results: Path, on_skip=_warn):
    """(path, record) for each readable, consistent record.json under `results`, sorted by path; every other
    one is skipped with one line to `on_skip` naming it and why (never fatal, never merged)."""
    for path in sorted(Path(results).rglob(RECORD)):
        try:
            rec = read_record(path)
        except RecordError as e:
            on_skip(f"skipped {path}: {str(e).removeprefix(f'cannot read run record {path}: ')}")
            continue
        why = inconsistency(rec)
        if why:
            on_skip(f"skipped {path}: {why}")
            continue
        yield path, rec


def load_records(results: Path, on_skip=_warn) -> list[RunRecord]:
    """Every readable, consistent record under `results`; unreadable or inconsistent ones are skipped with a
    warning each (see iter_record_files)."""
    results = Path(results)
    if not results.exists():
        raise RecordError(f"results folder {results} does not exist (run `shala-bench run` first, or pass --results)")
    return [rec for _, rec in iter_record_files(results, on_skip)]


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
          "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "device": str(device)}
    try:
        hw["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION"):
        if var in os.environ:
            hw[var.lower()] = os.environ[var]
    return hw


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
