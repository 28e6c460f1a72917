"""NTU RGB+D 120 from the official .skeleton text files: parsing, normalisation, splits, cache, end to end."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shala_bench.data import ntu120
from shala_bench.data.prepare import prepared_record
from shala_bench.data.spec import Split
from shala_bench.errors import DataError, ProtocolError
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry

from conftest import smoke_spec

VIEW_ANGLES = {1: -math.pi / 4, 2: 0.0, 3: math.pi / 4}  # the three cameras look from -45, 0, +45 degrees


def pose(frame: int, action: int, performer: int) -> np.ndarray:
    """A (25, 3) skeleton in metres: a performer-specific rest pose whose joints move with an
    action-specific frequency; joint 1 (the spine centre) starts at (0.1 * performer, 0, 3)."""
    j = np.arange(25, dtype=np.float64)
    rest = np.stack([0.03 * np.sin(j), 0.04 * (12 - j), 0.02 * np.cos(j)], 1)
    rest -= rest[1]
    wave = 0.05 * np.sin(0.6 * action * frame + j)[:, None] * np.array([1.0, 0.5, 0.2])
    return rest + wave + np.array([0.1 * performer, 0.0, 3.0])


def in_camera(xyz: np.ndarray, camera: int) -> np.ndarray:
    a = VIEW_ANGLES[camera]
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return xyz @ rot.T


def skeleton_text(bodies_per_frame: list[list[tuple[str, np.ndarray]]]) -> str:
    """The official text format: frame count; per frame the body count; per body 10 body values,
    the joint count, and 25 lines of 12 joint values."""
    lines = [str(len(bodies_per_frame))]
    for bodies in bodies_per_frame:
        lines.append(str(len(bodies)))
        for body_id, xyz in bodies:
            lines.append(f"{body_id} 0 1 2 1 2 0 0.01 -0.02 2")
            lines.append("25")
            for x, y, z in xyz:
                # x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState
                lines.append(f"{x:.6f} {y:.6f} {z:.6f} 250.1 200.2 1000.3 500.4 0.9 0.1 0.2 0.3 2")
    return "\n".join(lines) + "\n"


def write_ntu(root: Path, setups=(1,), performers=(1, 3), replications=(1, 2), actions=(1, 2), n_frames=None) -> Path:
    """One .skeleton file per (setup, camera, performer, replication, action): 3 views of each performance."""
    root.mkdir(parents=True, exist_ok=True)
    for s in setups:
        for p in performers:
            for r in replications:
                for a in actions:
                    n = n_frames or 8 + 2 * a + r
                    for c in (1, 2, 3):
                        frames = [[(f"7205{p}{r}", in_camera(pose(f, a, p), c))] for f in range(n)]
                        name = f"S{s:03d}C{c:03d}P{p:03d}R{r:03d}A{a:03d}.skeleton"
                        (root / name).write_text(skeleton_text(frames))
    return root


def proto(frames: int | None = None, split: str | None = None, **kw):
    """The smoke recipe on ntu120; `frames` / `split` are the dataset's own settings (ntu120.frames, ntu120.split)."""
    own = {f"ntu120.{k}": v for k, v in (("frames", frames), ("split", split)) if v is not None}
    return make_protocol(get_registry().get_dataset("ntu120"), "smoke", {**kw, **own})


# ---------------------------------------------------------------- reading and normalising
def test_read_skeleton_keeps_xyz_of_the_body_tracked_longest(tmp_path):
    main = [pose(f, 1, 1) for f in range(6)]
    other = pose(0, 2, 2) + 1.0
    # frame 0 lists a passer-by first; the main body is the one present in most frames
    frames = [[("passer", other), ("main", main[0])]] + [[("main", main[f])] for f in range(1, 6)] + [[]]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(skeleton_text(frames))
    seq = ntu120.read_skeleton(path)
    assert seq.shape == (6, 25, 3)  # the empty last frame is dropped
    np.testing.assert_allclose(seq, np.stack(main), atol=1e-6)


def test_normalise_resamples_linearly_and_centres_on_first_frame_spine():
    n, T = 5, 9
    seq = np.zeros((n, 25, 3))
    seq[:, :, 0] = np.arange(n)[:, None] * 0.4  # x moves 0.4 m per frame
    seq[:, :, 2] = 3.0
    seq[0, ntu120.CENTRE_JOINT] += [0.0, 0.1, 0.0]
    out, clipped = ntu120.normalise(seq, T)
    assert out.shape == (T, 25, 3) and out.dtype == np.float32
    # first frame's spine centre maps to the middle of [0, 1]
    np.testing.assert_allclose(out[0, ntu120.CENTRE_JOINT], [0.5, 0.5, 0.5], atol=1e-6)
    # linear motion stays linear at the resampled times t = k * (n-1)/(T-1): x = 0.4 t metres
    t = np.linspace(0, n - 1, T)
    np.testing.assert_allclose(out[:, 0, 0], 0.5 + 0.4 * t / (2 * ntu120.BOUND_M), atol=1e-6)
    assert clipped == 0 and out.min() >= 0 and out.max() <= 1
    far, clipped = ntu120.normalise(seq * 10, T)  # 16 m of travel leaves the 4 m window
    assert clipped > 0 and far.min() >= 0 and far.max() <= 1


def test_truncated_file_is_one_line_error_naming_file_and_leaves_no_cache(tmp_path):
    root = write_ntu(tmp_path / "ntu")
    bad = root / "S001C002P003R001A002.skeleton"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(lines[:40]) + "\n")  # cut inside the joint block of a frame
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        ntu120.DATASET.prepare(root, proto(), cache, progress=False)
    msg = str(e.value)
    assert str(bad) in msg and "truncated" in msg and "\n" not in msg
    assert not list((cache / "datasets").glob("ntu120-*[!k]"))  # only lock files, no cache folder
    assert prepared_record("ntu120", cache) is None


def test_malformed_joint_line_names_the_line(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    lines = skeleton_text([[("b", pose(0, 1, 1))]]).splitlines()
    lines[5] = "0.1 0.2 oops 1 2 3 4 5 6 7 8 9"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"line 6: expected 12 numbers per joint"):
        ntu120.read_skeleton(path)


# ---------------------------------------------------------------- conversion and splits
def test_missing_list_and_bodiless_files_are_skipped_and_counted(tmp_path):
    root = write_ntu(tmp_path / "ntu")
    (root / "S001C003P001R002A001.skeleton").write_text(skeleton_text([[], [], []]))  # no body in any frame
    (root / "NTU_RGBD120_samples_with_missing_skeletons.txt").write_text("S001C001P003R001A002\nS009C001P010R001A050\n")
    info = ntu120.DATASET.prepare(root, proto(), tmp_path / "cache", progress=False)
    rep = info["converter_report"]
    assert rep["skeleton_files"] == 24 and rep["missing_list_given"]
    assert rep["skipped_missing_list"] == 1 and rep["skipped_zero_bodies"] == 1
    assert rep["dropped_incomplete_performances"] == 2 and rep["tuples"] == 6
    assert info["splits"] == {"all": 6}


def test_views_of_one_performance_form_one_tuple_with_its_action(tmp_path):
    root = write_ntu(tmp_path / "ntu", n_frames=12)
    p = proto(n_val=1)
    ntu120.DATASET.prepare(root, p, tmp_path / "cache", progress=False)
    data = ntu120.DATASET.load(p, tmp_path / "cache")
    assert data.spec.names == ["cam1", "cam2", "cam3"] and data.spec.n_classes == 120
    test = data.splits["test"]  # performer 3 is not a cross-subject training performer
    assert len(test) == 4 and len(data.splits["train"]) == 3 and len(data.splits["val"]) == 1
    for i in range(len(test)):
        a = int(test.labels[i]) + 1  # A001 -> 0
        for c, view in zip((1, 2, 3), ("cam1", "cam2", "cam3")):
            seq = np.stack([in_camera(pose(f, a, 3), c) for f in range(12)])
            want, _ = ntu120.normalise(seq, 16)
            # each replication of (performer 3, action a) has the same motion: match either
            assert np.allclose(test.data[view][i].numpy(), want, atol=1e-5)


def _meta_split(meta: list[tuple[int, int, int, int]], T=16) -> dict[str, Split]:
    n = len(meta)
    data = {v: torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, T, 25, 3).clone() for v in ntu120.VIEWS}
    return {"all": Split(data, torch.tensor(meta))}


def test_cross_subject_and_cross_setup_follow_the_official_rules():
    # (action, setup, performer, replication); performers 1 and 2 train in xsub, 3 and 6 do not
    meta = [(5, 1, 1, 1), (6, 2, 3, 1), (7, 3, 2, 1), (8, 4, 6, 1), (9, 2, 1, 2), (10, 5, 3, 2)]
    splits = _meta_split(meta)
    for split, train_rows in (("xsub", {0, 2, 4}), ("xset", {1, 3, 4})):
        spec, out = ntu120.DATASET.select(splits, proto(split=split, n_val=0))
        got_train = {int(x) for x in out["train"].data["cam1"][:, 0, 0, 0]}
        got_test = {int(x) for x in out["test"].data["cam2"][:, 0, 0, 0]}
        assert got_train == train_rows and got_test == set(range(6)) - train_rows
        assert out["train"].labels.tolist() == [meta[i][0] for i in out["train"].data["cam3"][:, 0, 0, 0].long()]
        assert ntu120.settings(proto(split=split)).split == split
    with pytest.raises(ProtocolError, match="ntu120.split must be one of xsub, xset"):
        ntu120.DATASET.select(splits, proto(split="xview"))
    # and a recipe that bypassed the config's validation is refused when the split is drawn
    import dataclasses

    bad = dataclasses.replace(proto(), dataset_settings={**proto().dataset_settings, "split": "xview"})
    with pytest.raises(ProtocolError, match="ntu120.split must be one of xsub, xset"):
        ntu120.DATASET.select(splits, bad)


def test_val_is_a_seeded_slice_of_train_and_n_modalities_takes_the_first_views():
    meta = [(i % 3, 2, 1, i) for i in range(10)] + [(0, 1, 3, 1)]
    splits = _meta_split(meta)
    spec, a = ntu120.DATASET.select(splits, proto(n_val=3, n_modalities=2))
    _, b = ntu120.DATASET.select(splits, proto(n_val=3, n_modalities=2))
    _, c = ntu120.DATASET.select(splits, proto(n_val=3, n_modalities=2, data_seed=1))
    ids = lambda s: [int(x) for x in s.data["cam1"][:, 0, 0, 0]]
    assert spec.names == ["cam1", "cam2"] and set(a["val"].data) == {"cam1", "cam2"}
    assert len(a["val"]) == 3 and len(a["train"]) == 7 and not set(ids(a["val"])) & set(ids(a["train"]))
    assert ids(a["val"]) == ids(b["val"]) and ids(a["val"]) != ids(c["val"])


def test_frames_must_suit_the_backbone():
    with pytest.raises(ProtocolError, match="multiple of 4"):
        ntu120.frames(proto(frames=10))


# ---------------------------------------------------------------- cache behaviour
def test_prepare_reuses_cache_and_rebuilds_on_changed_source_or_converter(tmp_path, monkeypatch):
    root, cache = write_ntu(tmp_path / "ntu"), tmp_path / "cache"
    p = proto()
    first = ntu120.DATASET.prepare(root, p, cache, progress=False)
    again = ntu120.DATASET.prepare(root, p, cache, progress=False)
    assert first["built"] and not again["built"] and first["cache"] == again["cache"]
    f = root / "S001C001P001R001A001.skeleton"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # same bytes, new mtime
    changed = ntu120.DATASET.prepare(root, p, cache, progress=False)
    assert changed["built"] and changed["cache"] != first["cache"]
    monkeypatch.setattr(ntu120.NTU120, "converter_version", 2)
    bumped = ntu120.DATASET.prepare(root, p, cache, progress=False)
    assert bumped["built"] and bumped["cache"] not in (first["cache"], changed["cache"])
    assert prepared_record("ntu120", cache)["converter_version"] == 2


def test_loader_builds_new_frame_counts_from_the_prepared_source_and_refuses_a_changed_one(tmp_path):
    root, cache = write_ntu(tmp_path / "ntu"), tmp_path / "cache"
    ntu120.DATASET.prepare(root, proto(), cache, progress=False)
    data = ntu120.DATASET.load(proto(frames=8, n_val=1), cache)  # not prepared for T = 8: built from root
    assert data.spec.modalities[0].shape == (8, 25, 3) and data.source["root"] == str(root.resolve())
    (root / "S001C001P001R001A001.skeleton").unlink()
    with pytest.raises(DataError, match=r"changed since it was prepared; run `.*shala-bench data prepare ntu120 --root"):
        ntu120.DATASET.load(proto(frames=12, n_val=1), cache)
    ntu120.DATASET.load(proto(frames=8, n_val=1), cache)  # the cache built before still serves


def test_unprepared_dataset_says_which_command_to_run(tmp_path, results):
    from shala_bench.launch import run_one

    with pytest.raises(DataError) as e:
        run_one(smoke_spec("mvae", results, dataset="ntu120", cache_dir=str(tmp_path / "empty")))
    assert "dataset ntu120 is not prepared: run `" in str(e.value)
    assert "shala-bench data prepare ntu120 --root PATH`" in str(e.value)
    assert not list(results.rglob("record.json"))


# ---------------------------------------------------------------- end to end
def test_prepare_then_smoke_training_and_evaluation_end_to_end(tmp_path, results):
    from shala_bench.launch import run_one

    root, cache = write_ntu(tmp_path / "ntu"), tmp_path / "cache"
    ntu120.DATASET.prepare(root, proto(), cache, progress=False)
    rec = run_one(smoke_spec("mvae", results, dataset="ntu120", cache_dir=str(cache), overrides={"n_val": 1, "max_train_samples": 24}))
    assert rec.ok, rec.status
    m = rec.metrics
    assert rec.n_modalities == 3
    for k in ("classifier_acc_cam1", "coherence_cond_k1", "coherence_cond_k2", "coherence_cond_mean", "coherence_joint"):
        assert 0.0 <= m[k] <= 1.0, k
    assert (results / "ntu120" / "mvae" / rec.run_id / "record.json").exists()


# ---------------------------------------------------------------- the skeleton networks
def test_skeleton_backbone_and_classifier_shapes():
    from shala_bench.backbones import make_backbones
    from shala_bench.data.spec import ModalitySpec
    from shala_bench.metrics.classifiers import make_classifier

    spec = ModalitySpec("cam1", "skeleton", (16, 25, 3))
    enc, dec = make_backbones(spec, 8)
    x = torch.rand(5, 16, 25, 3)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (5, 8)
    assert dec(mu).shape == (5, 16, 25, 3)
    assert dec(torch.randn(2, 5, 8)).shape == (2, 5, 16, 25, 3)  # leading sample dims, e.g. (K, B, D)
    clf = make_classifier(spec, 120)
    assert clf(x).shape == (5, 120) and clf.features(x).shape == (5, clf.feature_dim)
    # time order matters to the encoder: reversing the sequence changes the code
    assert not torch.allclose(enc(x.flip(1))[0], mu)
    with pytest.raises(ProtocolError, match="T a multiple of 4"):
        make_backbones(ModalitySpec("cam1", "skeleton", (10, 25, 3)), 8)


def test_skeleton_classifier_learns_motions_of_a_few_centimetres():
    from shala_bench.data.spec import ModalitySpec
    from shala_bench.metrics.classifiers import make_classifier

    # two actions that differ only in how a rest pose sways: 4 cm at 1 or 3 cycles per clip,
    # i.e. about 0.01 in the [0, 1] coordinates a converted skeleton lives in
    g = torch.Generator().manual_seed(0)
    n, T = 128, 16
    y = torch.arange(n) % 2
    t = torch.linspace(0, 2 * math.pi, T)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    sway = 0.01 * torch.sin((1 + 2 * y[:, None]) * t + phase)  # (n, T)
    rest = 0.5 + 0.1 * torch.rand(1, 1, 25, 3, generator=g)
    x = rest + sway[:, :, None, None] + 0.002 * torch.randn(n, T, 25, 3, generator=g)
    torch.manual_seed(0)
    clf = make_classifier(ModalitySpec("cam1", "skeleton", (T, 25, 3)), 120)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    for step in range(60):
        idx = torch.randperm(n, generator=g)[:32]
        loss = torch.nn.functional.cross_entropy(clf(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    with torch.no_grad():
        assert (clf(x).argmax(1) == y).float().mean() >= 0.9
