"""PolyMNIST from the official PNG release: pairing by file name, errors, splits, cache, end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shala_bench.data import polymnist
from shala_bench.data.prepare import prepared_record
from shala_bench.errors import DataError
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry

from conftest import smoke_spec


def marker_image(index: int, label: int, m: int) -> np.ndarray:
    """A 28x28 RGB image whose pixels encode (index, label, modality): R = index, G = label, B = m,
    plus a label-shaped bright bar so a classifier has something to learn."""
    img = np.zeros((28, 28, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = index, 10 * label, 40 * m
    img[4 + 2 * label:6 + 2 * label, 4:24] = 255
    return img


def write_polymnist(root: Path, n_train_per_label=3, n_test_per_label=1, labels=(0, 1, 2, 3)) -> Path:
    """`train|test/m0..m4/{index}.{label}.png` as the official generator writes them: the index restarts
    at 0 for every label. Each modality folder is written in a different order, so directory listings
    differ between modalities."""
    for split, n in (("train", n_train_per_label), ("test", n_test_per_label)):
        keys = [(i, y) for y in labels for i in range(n)]
        for m in range(5):
            folder = root / split / f"m{m}"
            folder.mkdir(parents=True, exist_ok=True)
            order = np.random.default_rng(m).permutation(len(keys))
            for k in order:
                i, y = keys[k]
                Image.fromarray(marker_image(i, y, m)).save(folder / f"{i}.{y}.png")
    return root


def proto(**kw):
    return make_protocol(get_registry().get_dataset("polymnist"), "smoke", kw)


def decode(img: torch.Tensor) -> tuple[int, int, int]:
    """(index, label, modality) encoded by marker_image, from a stored (3, 28, 28) uint8 image."""
    return int(img[0, 0, 0]), int(img[1, 0, 0]) // 10, int(img[2, 0, 0]) // 40


def test_tuples_pair_files_by_name_not_listing_order(tmp_path, monkeypatch):
    root, cache = write_polymnist(tmp_path / "pm"), tmp_path / "cache"
    # every folder lists its files in its own shuffled order, as file systems are free to
    listdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(np.random.default_rng(len(str(self)) + ord(self.name[-1]))
                                                          .permutation(sorted(listdir(self))).tolist()))
    info = polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    assert info["splits"] == {"train": 12, "test": 4}
    stored, _, _ = polymnist.DATASET._build(root, prepared_record("polymnist", cache), proto(), cache, False, True)
    for split in stored.values():
        for t in range(len(split)):
            codes = [decode(split.data[f"m{m}"][t]) for m in range(5)]
            index, label = codes[0][:2]
            assert codes == [(index, label, m) for m in range(5)]  # one file name across all five folders
            assert int(split.labels[t]) == label
            img = split.data["m0"][t]
            assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 28, 28)


def test_missing_modality_file_is_one_line_error_and_leaves_no_cache(tmp_path):
    root, cache = write_polymnist(tmp_path / "pm"), tmp_path / "cache"
    (root / "train" / "m3" / "2.1.png").unlink()
    with pytest.raises(DataError) as e:
        polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    msg = str(e.value)
    assert str(root / "train" / "m3" / "2.1.png") in msg and "missing" in msg and "\n" not in msg
    assert not [p for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")]
    assert prepared_record("polymnist", cache) is None


def test_unreadable_png_names_the_file(tmp_path):
    root = write_polymnist(tmp_path / "pm")
    bad = root / "test" / "m1" / "0.2.png"
    bad.write_bytes(bad.read_bytes()[:30])  # truncated PNG
    with pytest.raises(DataError, match=r"0\.2\.png: cannot read PNG"):
        polymnist.DATASET.prepare(root, proto(), tmp_path / "cache", progress=False)


def test_val_is_a_seeded_slice_of_train_and_n_modalities_takes_the_first(tmp_path):
    root, cache = write_polymnist(tmp_path / "pm"), tmp_path / "cache"
    polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    a = polymnist.DATASET.load(proto(n_val=3, n_modalities=2), cache)
    b = polymnist.DATASET.load(proto(n_val=3, n_modalities=2), cache)
    c = polymnist.DATASET.load(proto(n_val=3, n_modalities=2, data_seed=5), cache)
    assert a.spec.names == ["m0", "m1"] and set(a.splits["train"].data) == {"m0", "m1"}
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 9, "val": 3, "test": 4}
    keys = lambda s: [decode(x)[:2] for x in s.data["m0"]]
    assert not set(keys(a.splits["val"])) & set(keys(a.splits["train"]))
    assert keys(a.splits["val"]) == keys(b.splits["val"]) and keys(a.splits["val"]) != keys(c.splits["val"])
    capped = polymnist.DATASET.load(proto(n_val=2, n_train=5, n_test=3), cache)
    assert {k: len(v) for k, v in capped.splits.items()} == {"train": 5, "val": 2, "test": 3}
    with pytest.raises(DataError, match="n_val=12 leaves no training tuples"):
        polymnist.DATASET.load(proto(n_val=12), cache)


def test_prepare_reuses_cache_and_rebuilds_on_changed_source_or_converter(tmp_path, monkeypatch):
    root, cache = write_polymnist(tmp_path / "pm"), tmp_path / "cache"
    first = polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    again = polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    assert first["built"] and not again["built"] and first["cache"] == again["cache"]
    write_polymnist(root, labels=(4,))  # new tuples added to the source
    grown = polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    assert grown["built"] and grown["cache"] != first["cache"] and grown["splits"]["train"] == 15
    monkeypatch.setattr(polymnist.PolyMNIST, "converter_version", 7)
    bumped = polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    assert bumped["built"] and bumped["cache"] != grown["cache"]


def test_prepare_rejects_a_folder_without_polymnist_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no polymnist source files found"):
        polymnist.DATASET.prepare(tmp_path / "empty", proto(), tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match="not a folder"):
        polymnist.DATASET.prepare(tmp_path / "nowhere", proto(), tmp_path / "cache", progress=False)


def test_prepare_then_smoke_training_and_evaluation_end_to_end(tmp_path, results):
    from shala_bench.launch import run_one

    root, cache = write_polymnist(tmp_path / "pm"), tmp_path / "cache"
    polymnist.DATASET.prepare(root, proto(), cache, progress=False)
    rec = run_one(smoke_spec("mvae", results, dataset="polymnist", cache_dir=str(cache), overrides={"n_val": 2, "max_train_samples": 24}))
    assert rec.ok, rec.status
    assert rec.n_modalities == 3
    m = rec.metrics
    for k in ("classifier_acc_m0", "coherence_cond_k1", "coherence_cond_k2", "coherence_cond_mean", "coherence_joint"):
        assert 0.0 <= m[k] <= 1.0, k
    assert (results / "polymnist" / "mvae" / rec.run_id / "record.json").exists()
