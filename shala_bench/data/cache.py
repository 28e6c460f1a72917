"""The Arrow cache: sources are converted once into HF `datasets` folders and loaded as tensors.

Each modality is stored as a fixed-size list of uint8 (not Array3D), so a column maps
zero-copy onto one contiguous numpy buffer. A cache folder is keyed by a hash of
everything that determines its content (source, converter version, parameters); it is
built in a temporary folder under a file lock and renamed into place, so concurrent
array tasks never see a half-written cache and never build it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock

from shala_bench.data.spec import DatasetSpec, Split

COMPLETE = "_shala_bench_complete.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SHALA_BENCH_CACHE", Path.home() / ".cache" / "shala-bench"))


def cache_key(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Modality columns keep their dtype when it is one of these (pixels: uint8; token ids: ints;
# continuous signals such as skeleton coordinates: float32); anything else is stored as uint8.
_KEPT_DTYPES = (np.uint8, np.int16, np.int32, np.int64, np.float32)


def _stored_dtype(dtype: np.dtype) -> type:
    if dtype == np.float64 or dtype == np.float16:
        return np.float32
    return next((t for t in _KEPT_DTYPES if dtype == t), np.uint8)


def _to_arrow(split: Split):
    import pyarrow as pa

    cols = {}
    for name, arr in split.data.items():
        a = np.asarray(arr.numpy() if isinstance(arr, torch.Tensor) else arr)
        a = np.ascontiguousarray(a, dtype=_stored_dtype(a.dtype))
        flat = pa.array(a.reshape(-1))
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(a.shape[1:])))
    labels = split.labels.numpy() if isinstance(split.labels, torch.Tensor) else np.asarray(split.labels)
    if labels.ndim == 1:
        cols["label"] = pa.array(labels.astype(np.int64))
    else:
        cols["label"] = pa.FixedSizeListArray.from_arrays(pa.array(labels.reshape(-1).astype(np.int64)), labels.shape[1])
    return pa.table(cols)


def _from_arrow(ds, spec: DatasetSpec) -> Split:
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    data = {}
    for m in spec.modalities:
        col = table.column(m.name).combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        dtype = np.dtype(col.type.value_type.to_pandas_dtype())  # as stored by _to_arrow
        data[m.name] = torch.from_numpy(np.array(flat, dtype=dtype).reshape(-1, *m.shape))
    lab = table.column("label").combine_chunks()
    if str(lab.type).startswith("fixed_size_list"):  # (N, C) labels: multi-label data, or labels plus metadata
        labels = torch.from_numpy(lab.flatten().to_numpy().reshape(len(lab), -1).copy())
    else:
        labels = torch.from_numpy(lab.to_numpy().copy())
    return Split(data, labels.long())


def load_or_build(
    spec: DatasetSpec,
    key_payload: dict,
    build: Callable[[], dict[str, Split]],
    cache_dir: Path | None = None,
) -> tuple[dict[str, Split], Path]:
    """Return the splits of `spec` from the cache, building them once with `build()` if absent."""
    import datasets

    datasets.disable_progress_bars()
    root = Path(cache_dir or default_cache_dir()) / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{spec.name}-{cache_key(key_payload)}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / COMPLETE).exists():
            if folder.exists():  # left over from a killed build: never trusted
                shutil.rmtree(folder)
            splits = build()
            tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=root))
            try:
                dd = datasets.DatasetDict({k: datasets.Dataset(_to_arrow(v)) for k, v in splits.items()})
                dd.save_to_disk(str(tmp / "arrow"))
                (tmp / COMPLETE).write_text(json.dumps(key_payload, sort_keys=True, indent=1, default=str))
                os.replace(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    dd = datasets.load_from_disk(str(folder / "arrow"))
    return {k: _from_arrow(dd[k], spec) for k in dd.keys()}, folder
