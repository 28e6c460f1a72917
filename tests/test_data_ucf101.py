"""UCF101 from its official layout: AVI decoding, RGB-difference motion, split lists, cache behaviour, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shala_bench.data import ucf101
from shala_bench.data.cache import COMPLETE
from shala_bench.errors import DataError
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry

CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]


def write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    """frames: (n, H, W, 3) uint8 -> an MJPEG AVI (decodable by every FFmpeg build)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=fps)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuvj444p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def ramp(n: int, base: int, step: int, h: int = 48, w: int = 64) -> np.ndarray:
    """n flat frames whose grey level goes base, base+step, ... (clipped to 0..255)."""
    levels = np.clip(base + step * np.arange(n), 0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).copy()


def make_ucf(root: Path) -> Path:
    """3 classes x 2 groups x 2 clips; split s puts group s % 2 + 1 in test (both groups listed)."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, 1)))
    train = {s: [] for s in (1, 2, 3)}
    test = {s: [] for s in (1, 2, 3)}
    for ci, c in enumerate(CLASSES):
        for g in (1, 2):
            for clip in (1, 2):
                # the file name keeps the official spelling quirk (HandStandPushups) of one class
                stem = "HandStandPushups" if c == "HandstandPushups" else c
                rel = f"{c}/v_{stem}_g{g:02d}_c{clip:02d}.avi"
                write_avi(root / "UCF-101" / rel, ramp(6 + clip, base=40 * ci + 10 * g, step=8 * (ci + 1)))
                for s in (1, 2, 3):
                    if g == s % 2 + 1:
                        test[s].append(rel)
                    else:
                        train[s].append(f"{rel} {ci + 1}")
    for s in (1, 2, 3):
        (lists / f"trainlist0{s}.txt").write_text("\n".join(train[s]) + "\n")
        (lists / f"testlist0{s}.txt").write_text("\n".join(test[s]) + "\n")
    return root


def smoke_protocol(split: int | None = None, frames: int | None = None, **overrides):
    """The smoke recipe on ucf101; `split` / `frames` are the dataset's own settings (ucf101.split, ucf101.frames)."""
    own = {f"ucf101.{k}": v for k, v in (("split", split), ("frames", frames)) if v is not None}
    return make_protocol(get_registry().get_dataset("ucf101"), "smoke", {**overrides, **own})


def test_decoded_clip_samples_uniform_frames_and_motion_is_the_next_frame_difference(tmp_path):
    path = tmp_path / "v.avi"
    write_avi(path, ramp(9, base=20, step=20))  # frame t has grey level 20 + 20 t
    rgb, motion = ucf101.decode_clip(path, frames=3)
    assert rgb.shape == motion.shape == (3, 3, 64, 64) and rgb.dtype == np.uint8
    # time points round(linspace(0, 9 - 2, 3)) = 0, 4 (3.5 rounds to even), 7
    expected = np.array([20, 100, 160], dtype=float)
    assert np.abs(rgb.astype(float).mean(axis=(0, 2, 3)) - expected).max() < 3
    # motion: (next - now + 255) / 2 with next - now = 20
    assert abs(motion.astype(float).mean() - (20 + 255) / 2) < 2


def test_video_backbone_maps_clips_to_latents_and_back_with_leading_dims():
    from shala_bench.backbones import make_backbones
    from shala_bench.data.spec import ModalitySpec
    from shala_bench.metrics.classifiers import make_classifier

    spec = ModalitySpec("rgb", "video", (3, 5, 64, 64))
    enc, dec = make_backbones(spec, 16)
    x = torch.rand(2, 3, 5, 64, 64)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (2, 16)
    assert dec(torch.randn(4, 2, 16)).shape == (4, 2, 3, 5, 64, 64)  # e.g. K importance samples
    # frames are encoded with shared weights but the latent depends on their order
    assert not torch.allclose(enc(x.flip(2))[0], mu)
    clf = make_classifier(spec, 7)
    assert clf(x).shape == (2, 7) and clf.features(x).shape == (2, clf.feature_dim)


def test_decoding_keeps_only_the_frames_the_time_points_need(tmp_path):
    path = tmp_path / "v.avi"
    write_avi(path, ramp(9, base=20, step=20))
    n, kept = ucf101._decode_kept(path, n_hint=9, frames=3)
    assert n == 9 and sorted(kept) == [0, 1, 4, 5, 7, 8]  # time points 0, 4, 7 and their next frames
    n, kept = ucf101._decode_kept(path, n_hint=0, frames=3)  # no frame count in the header: keep all
    assert n == 9 and sorted(kept) == list(range(9))


def test_prepare_then_smoke_training_and_evaluation_end_to_end(tmp_path, results):
    from conftest import smoke_spec
    from shala_bench.launch import run_one

    root = make_ucf(tmp_path / "src")
    cache = tmp_path / "cache"
    report = ucf101.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert report["built"] and report["splits"] == {"all": 12}
    data = ucf101.DATASET.load(smoke_protocol(n_val=2), cache)
    assert data.spec.names == ["rgb", "motion"] and data.spec.class_names == tuple(CLASSES) and data.spec.n_classes == 3
    assert data.splits["train"].data["rgb"].shape[1:] == (3, 4, 64, 64)
    rec = run_one(smoke_spec("mvae", results, dataset="ucf101", cache_dir=str(cache), overrides={"n_val": 2, "max_train_samples": 24}))
    assert rec.ok, rec.status
    assert 0.0 <= rec.metrics["coherence_cond_k1"] <= 1.0 and "coherence_joint" in rec.metrics
    assert rec.metrics["classifier_acc_rgb"] >= 0.0


def test_split_lists_pick_train_val_test_and_labels_follow_the_class_folders(tmp_path):
    root = make_ucf(tmp_path / "src")
    cache = tmp_path / "cache"
    ucf101.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    for s, test_group in ((1, 2), (2, 1)):
        data = ucf101.DATASET.load(smoke_protocol(split=s, n_val=2), cache)
        sp = data.splits
        assert data.source["ucf_split"] == s  # recorded in every run record
        assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (4, 2, 6)
        assert sorted(sp["test"].labels.tolist()) == [0, 0, 1, 1, 2, 2]
        # grey level identifies class and group: base 40 ci + 10 g at the first time point
        first = sp["test"].data["rgb"][:, :, 0].float().mean(dim=(1, 2, 3))
        assert torch.allclose(first, 40 * sp["test"].labels.float() + 10 * test_group, atol=3)
        train_first = torch.cat([sp["train"].data["rgb"], sp["val"].data["rgb"]])[:, :, 0].float().mean(dim=(1, 2, 3))
        train_labels = torch.cat([sp["train"].labels, sp["val"].labels]).float()
        assert torch.allclose(train_first, 40 * train_labels + 10 * (3 - test_group), atol=3)


def test_unreadable_video_is_one_line_error_naming_the_file_and_leaves_no_cache(tmp_path):
    root = make_ucf(tmp_path / "src")
    bad = root / "UCF-101" / "Basketball" / "v_Basketball_g01_c02.avi"
    bad.write_bytes(b"RIFF" + bytes(100))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        ucf101.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    msg = str(e.value)
    assert str(bad) in msg and "unreadable video" in msg and "\n" not in msg
    datasets = cache / "datasets"
    assert not [p for p in datasets.iterdir() if not p.name.endswith(".lock")]
    assert not (cache / "prepared" / "ucf101.json").exists()
    with pytest.raises(DataError, match="not prepared: run `.*shala-bench data prepare ucf101 --root PATH`"):
        ucf101.DATASET.load(smoke_protocol(), cache)


def test_missing_list_file_is_named(tmp_path):
    root = make_ucf(tmp_path / "src")
    (root / "ucfTrainTestlist" / "testlist02.txt").unlink()
    with pytest.raises(DataError, match="testlist02.txt: missing"):
        ucf101.DATASET.prepare(root, smoke_protocol(), tmp_path / "cache", progress=False)


def test_preparing_twice_reuses_the_cache_and_a_changed_video_rebuilds_it(tmp_path):
    root = make_ucf(tmp_path / "src")
    cache = tmp_path / "cache"
    first = ucf101.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    again = ucf101.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert first["built"] and not again["built"] and first["cache"] == again["cache"]
    write_avi(root / "UCF-101" / "Basketball" / "v_Basketball_g01_c01.avi", ramp(12, base=200, step=-10))
    changed = ucf101.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert changed["built"] and changed["cache"] != first["cache"]
    assert (Path(changed["cache"]) / COMPLETE).exists()
    record = json.loads((cache / "prepared" / "ucf101.json").read_text())
    assert record["fingerprint"] == changed["source"]["fingerprint"] != first["source"]["fingerprint"]
