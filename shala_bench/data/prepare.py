"""Datasets built from local files in their official formats: prepare once, then load.

Many datasets cannot be downloaded here (size, licences): the user points
``shala-bench data prepare NAME --root PATH`` at their copy, the plugin converts it
into the Arrow cache (``shala_bench.data.cache.load_or_build``) and a small *prepared
record* remembers where the source is and what it looked like. Runs then load the
cache; ``shala-bench run`` on a dataset that was never prepared says exactly which
command to run.

The cache key holds
- the source fingerprint: a hash of the sorted (relative path, size, mtime) of every
  source file, so an edited, added or removed file gives a new cache;
- the converter version of the plugin (bump it when the conversion changes);
- the protocol fields the stored arrays depend on (e.g. frames per sequence).
A cache missing for a new set of protocol fields is built by the loader from the
recorded root, after checking that the source still has the recorded fingerprint.

A dataset plugin subclasses :class:`LocalDataset` and fills in five methods; the
subclass gives the registry its ``loader``, ``prepare`` and ``info`` callables.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from shala_bench.data.cache import COMPLETE, default_cache_dir, load_or_build
from shala_bench.data.spec import DatasetSpec, LoadedDataset, Split
from shala_bench.errors import DataError
from shala_bench.protocol import Protocol

PREPARED = "prepared"  # <cache>/prepared/<dataset>.json: the prepared records
STATS = "converter_stats.json"  # beside each cache built from a local source: what the converter saw


# ---------------------------------------------------------------- source fingerprint
def fingerprint(root: Path, include) -> dict:
    """{"hash", "files", "bytes"} of the files under `root` for which include(relative posix path) is true.

    The hash covers each file's relative path, size and modification time (ns), sorted by
    path, so it does not depend on directory-listing order and costs one stat per file.
    """
    h = hashlib.sha256()
    n_files = n_bytes = 0
    rows = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = name if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{name}"
            if include(rel):
                st = os.stat(os.path.join(dirpath, name))
                rows.append((rel, st.st_size, st.st_mtime_ns))
    for rel, size, mtime in sorted(rows):
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
        n_files += 1
        n_bytes += size
    return {"hash": h.hexdigest()[:16], "files": n_files, "bytes": n_bytes}


# ---------------------------------------------------------------- prepared records
def _cache_root(cache_dir) -> Path:
    return Path(cache_dir or default_cache_dir())


def record_path(name: str, cache_dir=None) -> Path:
    return _cache_root(cache_dir) / PREPARED / f"{name}.json"


def prepared_record(name: str, cache_dir=None) -> dict | None:
    """The prepared record of dataset `name` (root, fingerprint, ...), or None if never prepared."""
    path = record_path(name, cache_dir)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read prepared record {path}: {e}; delete it and prepare {name} again") from None


def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def prepare_command(name: str, cache_dir=None, root: str = "PATH") -> str:
    """The exact command that prepares `name` into `cache_dir`."""
    env = ""
    if cache_dir is not None and _cache_root(cache_dir).resolve() != default_cache_dir().resolve():
        env = f"SHALA_BENCH_CACHE={_cache_root(cache_dir)} "
    return f"{env}shala-bench data prepare {name} --root {root}"


# ---------------------------------------------------------------- the base class
class LocalDataset:
    """A dataset converted from local files. Subclasses set the class attributes and fill in
    `include`, `stored_spec`, `cache_params`, `convert` and `select`."""

    name: str = ""
    converter_version: int = 1
    source_hint: str = ""  # what --root must be, e.g. "the PolyMNIST folder holding train/ and test/"

    # ------------------------------------------------------------ to fill in
    def include(self, rel: str) -> bool:
        """Is the file at relative posix path `rel` part of the source (fingerprinted)?"""
        raise NotImplementedError

    def stored_spec(self, protocol: Protocol) -> DatasetSpec:
        """The spec of what the cache stores (every modality the source has)."""
        raise NotImplementedError

    def cache_params(self, protocol: Protocol) -> dict:
        """Protocol fields the stored arrays depend on ({} when the cache serves every protocol)."""
        return {}

    def convert(self, root: Path, protocol: Protocol, progress: bool) -> tuple[dict[str, Split], dict]:
        """Read the official files under root: (stored splits, converter report such as skip counts).
        Raise DataError naming the file and what is wrong on malformed input."""
        raise NotImplementedError

    def select(self, splits: dict[str, Split], protocol: Protocol) -> tuple[DatasetSpec, dict[str, Split]]:
        """Cut what a run uses (modalities, train/val/test sizes) out of the stored splits."""
        raise NotImplementedError

    # ------------------------------------------------------------ provided
    def _check_root(self, root) -> Path:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"--root {root}: not a folder; expected {self.source_hint}")
        return root.resolve()

    def _key(self, record: dict, protocol: Protocol) -> dict:
        return dict(dataset=self.name, converter=self.converter_version, source=record["fingerprint"],
                    **self.cache_params(protocol))

    def _build(self, root: Path, record: dict, protocol: Protocol, cache_dir, progress: bool, verify: bool):
        """(stored splits, cache folder, built now?) for the prepared source `record`."""
        built = {}

        def build() -> dict[str, Split]:
            if verify:  # a cache is missing: make sure the source is still the one that was prepared
                if not root.is_dir():
                    raise DataError(f"{self.name}: the prepared source {root} is gone; run "
                                    f"`{prepare_command(self.name, cache_dir)}`")
                if fingerprint(root, self.include) != record["fingerprint_full"]:
                    raise DataError(f"{self.name}: the source under {root} changed since it was prepared; run "
                                    f"`{prepare_command(self.name, cache_dir, str(root))}`")
            splits, stats = self.convert(root, protocol, progress)
            built["stats"] = stats
            return splits

        splits, folder = load_or_build(self.stored_spec(protocol), self._key(record, protocol), build, cache_dir)
        if "stats" in built:
            _write_json_atomic(folder / STATS, built["stats"])
        return splits, folder, "stats" in built

    def _record_for(self, protocol: Protocol, cache_dir) -> dict:
        record = prepared_record(self.name, cache_dir)
        if record is None:
            raise DataError(f"dataset {self.name} is not prepared: run `{prepare_command(self.name, cache_dir)}` "
                            f"with PATH = {self.source_hint}")
        return record

    def prepare(self, root, protocol: Protocol, cache_dir=None, progress: bool = True) -> dict:
        """Convert the source under root into the cache (or reuse it) and record it as prepared."""
        root = self._check_root(root)
        fp = fingerprint(root, self.include)
        if fp["files"] == 0:
            raise DataError(f"--root {root}: no {self.name} source files found; expected {self.source_hint}")
        record = {"dataset": self.name, "root": str(root), "fingerprint": fp["hash"], "fingerprint_full": fp,
                  "files": fp["files"], "bytes": fp["bytes"], "converter_version": self.converter_version,
                  "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        splits, folder, built = self._build(root, record, protocol, cache_dir, progress, verify=False)
        _write_json_atomic(record_path(self.name, cache_dir), record)  # only after the cache is complete
        return {**describe(self.stored_spec(protocol), splits, folder, self._source(record)),
                "built": built, "converter_report": _read_stats(folder)}

    def _source(self, record: dict) -> dict:
        """What a run's data was built from (goes into records and `data info`)."""
        return {"root": record["root"], "fingerprint": record["fingerprint"], "files": record["files"],
                "bytes": record["bytes"], "converter_version": self.converter_version}

    def load(self, protocol: Protocol, cache_dir=None) -> LoadedDataset:
        record = self._record_for(protocol, cache_dir)
        stored, folder, _ = self._build(Path(record["root"]), record, protocol, cache_dir, progress=False, verify=True)
        spec, splits = self.select(stored, protocol)
        return LoadedDataset(spec, splits, self._source(record), str(folder))

    def info(self, protocol: Protocol, cache_dir=None) -> dict:
        data = self.load(protocol, cache_dir)
        folder = Path(data.cache_path)
        return {**describe(data.spec, data.splits, folder, data.source),
                "prepared_at": self._record_for(protocol, cache_dir).get("prepared_at", ""),
                "converter_report": _read_stats(folder)}


def _read_stats(folder: Path) -> dict:
    path = Path(folder) / STATS
    return json.loads(path.read_text()) if path.exists() else {}


def describe(spec: DatasetSpec, splits: dict[str, Split], folder, source: dict) -> dict:
    """What `shala-bench data info` shows: modalities, shapes, split sizes, cache path, source."""
    mods = []
    for m in spec.modalities:
        some = next((s.data[m.name] for s in splits.values() if m.name in s.data), None)
        mods.append({"name": m.name, "kind": m.kind, "shape": list(m.shape), "likelihood": m.likelihood,
                     "dtype": str(some.dtype).replace("torch.", "") if some is not None else "?"})
    return {"dataset": spec.name, "modalities": mods, "n_classes": spec.n_classes, "multilabel": spec.multilabel,
            "splits": {k: len(v) for k, v in splits.items()}, "cache": str(folder),
            "cache_complete": (Path(folder) / COMPLETE).exists(), "source": source}
