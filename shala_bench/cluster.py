"""Cluster profiles: one TOML file per SLURM cluster (or partition), read into a frozen dataclass.

A profile holds what a site admin would tell a new user: which partition, account and
QOS to use, how many GPUs and CPUs a job gets, its memory and time limit, how many array
tasks may run at once, node constraints, the shell lines that set up the environment
(``module load``, venv activation) and any other sbatch flag. ``slurm/example.toml`` is a
commented template; ``slurm/test-cluster.toml`` fits the single-node test cluster.

Only the keys below are accepted, so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from shala_bench.errors import ShalaBenchError, close_matches

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the `tomli` package
    import tomli as tomllib

PROFILE_DIR = "slurm"


class ClusterError(ShalaBenchError):
    """A cluster profile that is missing or malformed, or a scheduler that cannot be reached."""


@dataclass(frozen=True)
class ClusterProfile:
    name: str = "default"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1  # also the torch threads of each task
    mem_gb: float | None = None  # None: the partition's default
    timeout_min: int = 60
    array_parallelism: int = 64  # array tasks running at once (sbatch --array=0-N%P)
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines run before the task: module load, venv activation
    sbatch: dict = field(default_factory=dict)  # any other sbatch flag: {"mail-type": "FAIL"}
    signal_delay_s: int = 90  # the preemption signal comes this long before the time limit
    max_requeues: int = 3  # time-limit requeues a task may use (submitit's max_num_timeout)
    path: str = ""

    def submitit_parameters(self) -> dict:
        """Parameters of ``submitit.SlurmExecutor.update_parameters``."""
        p = {"time": int(self.timeout_min), "cpus_per_task": int(self.cpus_per_task),
             "array_parallelism": int(self.array_parallelism), "signal_delay_s": int(self.signal_delay_s)}
        if self.gpus_per_node:
            p["gpus_per_node"] = int(self.gpus_per_node)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                p[key] = getattr(self, key)
        if self.mem_gb:
            p["mem"] = f"{int(self.mem_gb)}GB" if float(self.mem_gb).is_integer() else f"{int(self.mem_gb * 1024)}MB"
        if self.setup:
            p["setup"] = list(self.setup)
        if self.sbatch:
            p["additional_parameters"] = dict(self.sbatch)
        return p

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["setup"] = list(self.setup)
        return d

    @classmethod
    def from_dict(cls, d: dict, name: str = "default", path: str = "") -> "ClusterProfile":
        known = {f.name for f in dataclasses.fields(cls)} - {"name", "path"}
        unknown = sorted(set(d) - known - {"name", "path"})
        if unknown:
            raise ClusterError(f"cluster profile {path or name}: unknown key {unknown[0]!r}" + close_matches(unknown[0], known))
        values = dict(d)
        values.setdefault("name", name)
        values.setdefault("path", path)
        setup = values.get("setup", ())
        if isinstance(setup, str):
            setup = [setup]
        if not isinstance(setup, (list, tuple)) or not all(isinstance(s, str) for s in setup):
            raise ClusterError(f"cluster profile {path or name}: setup must be a list of shell lines")
        values["setup"] = tuple(setup)
        if not isinstance(values.get("sbatch", {}), dict):
            raise ClusterError(f"cluster profile {path or name}: [sbatch] must be a table of flag = value")
        profile = cls(**values)
        for key in ("cpus_per_task", "timeout_min", "array_parallelism"):
            if not isinstance(getattr(profile, key), int) or getattr(profile, key) < 1:
                raise ClusterError(f"cluster profile {path or name}: {key} must be a positive integer")
        if not isinstance(profile.gpus_per_node, int) or profile.gpus_per_node < 0:
            raise ClusterError(f"cluster profile {path or name}: gpus_per_node must be an integer >= 0")
        return profile


def resolve_profile_path(name_or_path: str) -> Path:
    """`slurm/gpu.toml`, `slurm/gpu`, or a bare `gpu` looked up as `slurm/gpu.toml`."""
    path = Path(name_or_path)
    candidates = [path] if path.suffix == ".toml" else [path, Path(f"{path}.toml"), Path(PROFILE_DIR) / f"{path}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in Path(PROFILE_DIR).glob("*.toml")) if Path(PROFILE_DIR).is_dir() else []
    hint = f"; profiles in ./{PROFILE_DIR}: {', '.join(known)}" if known else f"; see {PROFILE_DIR}/example.toml"
    raise ClusterError(f"--cluster {name_or_path}: no such profile" + hint)


def load_profile(name_or_path: str | None) -> ClusterProfile:
    """Read a TOML profile; None gives the defaults (the cluster's default partition)."""
    if name_or_path is None:
        return ClusterProfile()
    path = resolve_profile_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ClusterError(f"cannot read cluster profile {path}: {e}") from None
    return ClusterProfile.from_dict(data, name=path.stem, path=str(path))
