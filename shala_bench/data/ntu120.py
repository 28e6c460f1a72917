"""NTU RGB+D 120 skeletons (Liu et al., TPAMI 2019): the three camera views of one performance as three modalities.

Source: the official skeleton release, ``SsssCcccPpppRrrrAaaa.skeleton`` text files (setup,
camera, performer, replication, action) anywhere under ``--root``, and optionally the
authors' list of samples with missing skeletons,
``NTU_RGBD120_samples_with_missing_skeletons.txt`` (or NTU 60's
``NTU_RGBD_samples_with_missing_skeletons.txt``), anywhere under the root as well.

File format (as read by the authors' ``read_skeleton_file``): the frame count; per frame
the body count; per body one line of 10 body values (bodyID clippedEdges
handLeftConfidence handLeftState handRightConfidence handRightState isRestricted leanX
leanY trackingState), the joint count (25), then one line of 12 values per joint (x y z
depthX depthY colorX colorY orientationW orientationX orientationY orientationZ
trackingState). We use the camera-space x y z (metres).

Conversion, per file (= per view):
- the main body: the body ID tracked in the most frames (the first listed wins ties; for
  one-person actions it is the first body); frames without it are dropped;
- resampled to `ntu120.frames` frames by linear interpolation over time (as CTR-GCN's
  ``valid_crop_resize`` does at test time);
- centred on the middle-of-spine joint (joint 2; index 1) of the first frame, the
  translation used by the 2s-AGCN / CTR-GCN ``pre_normalization``. We do *not* rotate the
  body into a canonical frame as that code also does: the three views are the modalities,
  and rotating each into the body frame would make them nearly identical;
- mapped into [0, 1] by x' = 1/2 + x / (2 * 2 m), clipped (the fraction of clipped
  coordinates is reported), so generated skeletons are scored like images are (the
  harness clamps generated modalities to [0, 1] before its classifiers) and one Laplace
  scale serves every modality.
Samples in the missing-skeleton list and files whose frames hold no body at all are
skipped (counted in the converter report); a performance is a tuple only when all three
views remain. A truncated or malformed file is an error naming the file and line.

Stored: all tuples, float32 (T, 25, 3) per view, with (action, setup, performer,
replication) per tuple, so both official benchmarks are cut at load time:
cross-subject (``ntu120.split=xsub``: the 53 training performer IDs of the paper) and
cross-setup (``ntu120.split=xset``: even setup IDs train, odd test). Val is a seeded slice of
`n_val` training tuples; train and test are seeded subsets of at most `n_train` /
`n_test`. Labels: the 120 actions, A001..A120 -> 0..119.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shala_bench.config import Config, gt, one_of, setting
from shala_bench.data.prepare import LocalDataset
from shala_bench.data.spec import DatasetSpec, ModalitySpec, Split
from shala_bench.errors import DataError, ProtocolError
from shala_bench.data.sources import DatasetSource
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import DatasetEntry

NAME = "ntu120"
VIEWS = ("cam1", "cam2", "cam3")  # cameras C001, C002, C003
N_JOINTS = 25
N_CLASSES = 120
CENTRE_JOINT = 1  # middle of the spine (joint 2 of the official 1-based numbering)
BOUND_M = 2.0  # metres either side of the centre that map into [0, 1]
MISSING_LISTS = ("NTU_RGBD120_samples_with_missing_skeletons.txt", "NTU_RGBD_samples_with_missing_skeletons.txt")
# Cross-subject benchmark: the performers whose samples are for training (Liu et al. 2019, Sec. 4.1).
XSUB_TRAIN_PERFORMERS = frozenset({
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49, 50, 52, 53, 54, 55,
    56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103,
})
SPLITS = ("xsub", "xset")
_FILE = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})\.skeleton$")


@dataclass(frozen=True)
class NTU120Config(Config):
    frames: int = setting(32, range=gt(0), doc="frames per sequence after resampling (a multiple of 4)")
    split: str = setting("xsub", range=one_of(*SPLITS), doc="the official benchmark: xsub (cross-subject) or xset")


def settings(protocol) -> NTU120Config:
    return NTU120Config(**protocol.dataset_settings)


def frames(protocol) -> int:
    T = settings(protocol).frames
    if T < 4 or T % 4:
        raise ProtocolError(f"ntu120.frames must be a positive multiple of 4 (the skeleton backbone halves time twice), got {T}")
    return T


def spec_for(n_modalities: int, T: int) -> DatasetSpec:
    mods = tuple(ModalitySpec(v, "skeleton", (T, N_JOINTS, 3), "laplace") for v in VIEWS[:n_modalities])
    return DatasetSpec(NAME, mods, N_CLASSES, tuple(f"A{a:03d}" for a in range(1, N_CLASSES + 1)))


# ---------------------------------------------------------------- reading one file
def read_skeleton(path: Path) -> np.ndarray | None:
    """x y z of the main body, (frames, 25, 3) float64 in metres; None when no frame holds a body."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__})") from None
    pos = 0

    def take(what: str) -> str:
        nonlocal pos
        if pos >= len(lines):
            raise DataError(f"{path}: truncated at line {pos + 1}: expected {what}")
        pos += 1
        return lines[pos - 1]

    def count(what: str) -> int:
        raw = take(what)
        try:
            n = int(raw.strip())
        except ValueError:
            raise DataError(f"{path}, line {pos}: expected {what} (an integer), got {raw.strip()[:40]!r}") from None
        if n < 0:
            raise DataError(f"{path}, line {pos}: negative {what} {n}")
        return n

    n_frames = count("the frame count")
    blocks: dict[str, list[int]] = {}  # body ID -> first line of its joint block, per frame it appears in
    for f in range(n_frames):
        for _ in range(count(f"the body count of frame {f + 1}")):
            info = take(f"a body-info line in frame {f + 1}").split()
            if len(info) != 10:
                raise DataError(f"{path}, line {pos}: expected 10 body values, got {len(info)}")
            n_joints = count(f"the joint count in frame {f + 1}")
            if n_joints != N_JOINTS:
                raise DataError(f"{path}, line {pos}: expected {N_JOINTS} joints, got {n_joints}")
            if pos + N_JOINTS > len(lines):
                raise DataError(f"{path}: truncated at line {len(lines) + 1}: expected {N_JOINTS} joint lines "
                                f"of frame {f + 1}")
            blocks.setdefault(info[0], []).append(pos)
            pos += N_JOINTS
    if not blocks:
        return None
    main = max(blocks, key=lambda b: len(blocks[b]))  # dicts keep first-seen order: the first listed wins ties
    rows = [lines[s + j] for s in blocks[main] for j in range(N_JOINTS)]
    try:
        vals = np.array(" ".join(rows).split(), dtype=np.float64)
        return vals.reshape(len(blocks[main]), N_JOINTS, 12)[..., :3]
    except ValueError:  # name the first bad joint line
        for s in blocks[main]:
            for j in range(N_JOINTS):
                fields = lines[s + j].split()
                try:
                    if len(fields) != 12:
                        raise ValueError
                    [float(v) for v in fields]
                except ValueError:
                    raise DataError(f"{path}, line {s + j + 1}: expected 12 numbers per joint, "
                                    f"got {lines[s + j].strip()[:60]!r}") from None
        raise


def normalise(seq: np.ndarray, T: int) -> tuple[np.ndarray, int]:
    """(n, 25, 3) metres -> (T, 25, 3) float32 in [0, 1]: resample, centre, map; also the clipped count."""
    n = len(seq)
    t = np.linspace(0.0, n - 1, T)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (t - lo)[:, None, None]
    out = (1 - w) * seq[lo] + w * seq[hi]  # linear interpolation over time
    out = out - seq[0, CENTRE_JOINT]  # centre: middle of the spine in the first frame
    out = 0.5 + out / (2 * BOUND_M)
    clipped = int(((out < 0) | (out > 1)).sum())
    return np.clip(out, 0.0, 1.0).astype(np.float32), clipped


# ---------------------------------------------------------------- the dataset
class NTU120(LocalDataset):
    name = NAME
    converter_version = 1
    source_hint = "the folder holding the NTU RGB+D 120 SsssCcccPpppRrrrAaaa.skeleton files (e.g. nturgb+d_skeletons/)"

    def include(self, rel: str) -> bool:
        return rel.endswith(".skeleton") or rel.rsplit("/", 1)[-1] in MISSING_LISTS

    def stored_spec(self, protocol) -> DatasetSpec:
        return spec_for(len(VIEWS), frames(protocol))

    def cache_params(self, protocol) -> dict:
        return {"ntu_frames": frames(protocol)}

    def convert(self, root: Path, protocol, progress: bool) -> tuple[dict[str, Split], dict]:
        T = frames(protocol)
        files: dict[tuple[int, ...], dict[int, Path]] = {}  # (S, P, R, A) -> camera -> file
        missing_listed: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn in MISSING_LISTS:
                    text = Path(dirpath, fn).read_text()
                    missing_listed |= {w for w in text.split() if w.startswith("S")}
                elif fn.endswith(".skeleton"):
                    m = _FILE.match(fn)
                    if not m:
                        raise DataError(f"{Path(dirpath, fn)}: not an NTU file name; expected SsssCcccPpppRrrrAaaa.skeleton")
                    s, c, p, r, a = (int(g) for g in m.groups())
                    if not 1 <= c <= 3 or not 1 <= a <= N_CLASSES:
                        raise DataError(f"{Path(dirpath, fn)}: camera must be C001..C003 and action A001..A{N_CLASSES}")
                    files.setdefault((s, p, r, a), {})[c] = Path(dirpath, fn)
        report = {"skeleton_files": sum(len(v) for v in files.values()), "skipped_missing_list": 0,
                  "skipped_zero_bodies": 0, "dropped_incomplete_performances": 0, "missing_list_given": bool(missing_listed)}
        tuples, meta, lengths, clipped = {v: [] for v in VIEWS}, [], [], 0
        with tqdm(total=report["skeleton_files"], desc=f"{NAME}: reading skeletons", unit="file",
                  disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
            for key in sorted(files):
                views = {}
                for c, path in sorted(files[key].items()):
                    bar.update(1)
                    if path.name[:-len(".skeleton")] in missing_listed:
                        report["skipped_missing_list"] += 1
                        continue
                    seq = read_skeleton(path)
                    if seq is None:
                        report["skipped_zero_bodies"] += 1
                        continue
                    views[c] = seq
                if len(views) < len(VIEWS):
                    report["dropped_incomplete_performances"] += 1
                    continue
                for c, v in zip((1, 2, 3), VIEWS):
                    x, k = normalise(views[c], T)
                    tuples[v].append(x)
                    clipped += k
                    lengths.append(len(views[c]))
                s, p, r, a = key
                meta.append((a - 1, s, p, r))
        if not meta:
            raise DataError(f"{root}: no performance with all three views C001..C003 among "
                            f"{report['skeleton_files']} skeleton files")
        report["tuples"] = len(meta)
        report["frames_per_file"] = {"min": int(min(lengths)), "median": float(np.median(lengths)), "max": int(max(lengths))}
        report["clipped_fraction"] = clipped / (len(lengths) * T * N_JOINTS * 3)
        data = {v: torch.from_numpy(np.stack(tuples[v])) for v in VIEWS}
        # labels: (N, 4) = action, setup, performer, replication; `select` keeps the action
        return {"all": Split(data, torch.tensor(meta, dtype=torch.long))}, report

    def select(self, splits: dict[str, Split], protocol) -> tuple[DatasetSpec, dict[str, Split]]:
        if settings(protocol).split not in SPLITS:
            raise ProtocolError(f"ntu120.split must be one of {', '.join(SPLITS)} (cross-subject, cross-setup), "
                                f"got {settings(protocol).split!r}")
        allx = splits["all"]
        action, setup, performer = allx.labels[:, 0], allx.labels[:, 1], allx.labels[:, 2]
        if settings(protocol).split == "xsub":
            is_train = torch.isin(performer, torch.tensor(sorted(XSUB_TRAIN_PERFORMERS)))
        else:
            is_train = setup % 2 == 0
        train_pool, test_pool = is_train.nonzero().squeeze(1), (~is_train).nonzero().squeeze(1)
        if protocol.n_val >= len(train_pool) or len(test_pool) == 0:
            raise DataError(f"{NAME} ({settings(protocol).split}): {len(train_pool)} training and {len(test_pool)} test "
                            f"tuples in the source; need more than n_val={protocol.n_val} training and at least one test")
        g = torch.Generator().manual_seed(protocol.data_seed)
        train_pool = train_pool[torch.randperm(len(train_pool), generator=g)]
        test_idx = test_pool[torch.randperm(len(test_pool), generator=g)][:protocol.n_test]
        val_idx, train_idx = train_pool[:protocol.n_val], train_pool[protocol.n_val:][:protocol.n_train]
        views = VIEWS[:protocol.n_modalities]

        def cut(idx: torch.Tensor) -> Split:
            return Split({v: allx.data[v][idx] for v in views}, action[idx])

        spec = spec_for(protocol.n_modalities, frames(protocol))
        return spec, {"train": cut(train_idx), "val": cut(val_idx), "test": cut(test_idx)}


DATASET = NTU120()

PROFILES = {
    "smoke": dict(n_modalities=3),
    # Minutes on a 2-core CPU.
    "quick": dict(n_modalities=3, n_train=10000, n_val=500, n_test=2000, batch_size=128,
                  max_train_samples=76_800, eval_every=9_600, checkpoint_every=200, classifier_epochs=20, eval_n=1000,
                  joint_n=1000, fd_n=1000),
    # No multimodal-VAE paper reports NTU RGB+D 120; this is the harness's PolyMNIST recipe (batch 256, Adam
    # 5e-4, beta 2.5) on every tuple of the benchmark split (~300 epochs of the ~20k cross-subject training
    # tuples), with 64-frame sequences (the window length of CTR-GCN's NTU configs).
    "paper": dict(n_modalities=3, n_train=1_000_000, n_val=1000, n_test=1_000_000, batch_size=256,
                  max_train_samples=6_400_000, eval_every=320_000, lr=5e-4, beta=2.5, checkpoint_every=2000,
                  log_every=100, classifier_epochs=30, eval_n=10000, joint_n=10000, fd_n=10000),
}


SOURCE = DatasetSource(
    title="NTU RGB+D 120 (Liu et al., TPAMI 2019), 3D skeletons",
    obtain="ROSE Lab, Nanyang Technological University: https://rose1.ntu.edu.sg/dataset/actionRecognition/ — "
           "register, accept the release agreement and request access; the list of samples with missing skeletons "
           "is in https://github.com/shahroudy/NTURGB-D",
    files=("nturgbd_skeletons_s001_to_s017.zip (the NTU RGB+D 60 part)",
           "nturgbd_skeletons_s018_to_s032.zip (the 120 extension)",
           "NTU_RGBD120_samples_with_missing_skeletons.txt (optional, recommended)"),
    layout="""<root>/**/SsssCcccPpppRrrrAaaa.skeleton   (unpack both zips anywhere under root)
<root>/**/NTU_RGBD120_samples_with_missing_skeletons.txt""",
    licence="research and non-commercial use under the ROSE Lab release agreement; access on request (not an "
            "open download); cite Shahroudy et al. 2016 and Liu et al. 2019",
    size="114,480 skeleton files (56,880 + 57,600), about 10 GB of zips (the two skeleton archives)",
    checksums="none published by the source; `data prepare` checks that .skeleton files are present and reports "
              "every malformed file by name and line",
    required=("**/*.skeleton",),
)


@hookimpl
def shala_bench_register_datasets():
    return [DatasetEntry(NAME, DATASET.load, "NTU RGB+D 120 skeletons: the 3 camera views of a performance, 120 "
                                             "actions; needs `shala-bench data prepare ntu120 --root PATH`",
                         PROFILES, (2, len(VIEWS)), prepare=DATASET.prepare, info=DATASET.info,
                         coherence_chance=1 / N_CLASSES, source=SOURCE, config=NTU120Config,
                         config_defaults={"smoke": {"frames": 16}, "paper": {"frames": 64}})]
