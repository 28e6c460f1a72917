"""UCF101 action videos (Soomro et al., 2012): an RGB clip and its motion, from the official AVI files.

Source (``--root`` holds both folders of the official distribution)::

    UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt

Conversion (decoded with PyAV; deterministic):
- F = ``ucf101.frames`` time points uniformly spaced over the video (frame indices
  round(linspace(0, n-2, F)) of its n decoded frames).
- ``rgb``: the frame at each time point, centre-cropped to a square and resized to 64x64
  (PIL bilinear): (3, F, 64, 64) uint8.
- ``motion``: the RGB difference to the *next* decoded frame at each time point (the
  "RGB difference" motion input of Temporal Segment Networks; no optical flow, so no extra
  dependency), d = frame[t+1] - frame[t] in [-255, 255], stored as round((d + 255) / 2):
  (3, F, 64, 64) uint8 with 127.5 = no change.
- Labels: the 101 classes of ``classInd.txt`` (0-based). Every listed video is stored once
  with its membership in the three official splits; ``ucf101.split`` picks one at load time.
  Lists are matched to files case-insensitively (the official lists and folder names
  differ in case for one class on some copies).
- Splits: test = the split's test list; val = ``n_val`` videos held out of its train list
  (seeded by ``data_seed``); train = ``n_train`` of the rest. Each is a seeded random
  subset (in random order) when the protocol asks for fewer than there are.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shala_bench.config import Config, gt, one_of, setting
from shala_bench.data.prepare import LocalDataset
from shala_bench.data.spec import DatasetSpec, LoadedDataset, ModalitySpec, Split
from shala_bench.data.text import SidecarInCache
from shala_bench.errors import DataError, ProtocolError
from shala_bench.data.sources import DatasetSource
from shala_bench.hookspecs import hookimpl
from shala_bench.protocol import Protocol
from shala_bench.registry import DatasetEntry

NAME = "ucf101"
SIZE = 64
VIDEOS, LISTS = "UCF-101", "ucfTrainTestlist"
N_SPLITS = 3
TRAIN, TEST = 1, 2  # membership codes in the stored `lists` column, one per official split


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _square_64(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> centre square crop resized to (64, 64, 3)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(rgb[top:top + s, left:left + s])
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR))


def time_points(n: int, frames: int) -> np.ndarray:
    """Indices of `frames` time points uniformly spaced over n decoded frames (each has a next frame)."""
    return np.round(np.linspace(0, n - 2, frames)).astype(int)


def _decode_kept(path: Path, n_hint: int, frames: int) -> tuple[int, dict[int, np.ndarray]]:
    """Decode the video once, converting only the frames the time points need: (frames decoded, kept).

    With n_hint (the container's frame count) the kept frames are known up front, so a long
    video is never held in memory; without one (n_hint < 2) every frame is kept."""
    import av

    want = None
    if n_hint >= 2:
        at = time_points(n_hint, frames)
        want = set(at.tolist()) | set((at + 1).tolist())
    kept, n = {}, 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for n, frame in enumerate(container.decode(stream), 1):
                if want is None or n - 1 in want:
                    kept[n - 1] = _square_64(frame.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable video ({_one_line(e)})") from None
    return n, kept


def decode_clip(path: Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, motion), each (3, frames, 64, 64) uint8, from the video file at `path`."""
    import av

    try:
        with av.open(str(path)) as container:
            n_hint = int(container.streams.video[0].frames or 0)
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable video ({_one_line(e)})") from None
    n, kept = _decode_kept(path, n_hint, frames)
    if n != n_hint:  # the header's count was wrong: decode again, keeping every frame
        n, kept = _decode_kept(path, 0, frames)
    if n < 2:
        raise DataError(f"{path}: unreadable video ({n} decodable frames, need at least 2)")
    at = time_points(n, frames)
    now = np.stack([kept[t] for t in at]).astype(np.int16)  # (F, 64, 64, 3)
    nxt = np.stack([kept[t + 1] for t in at]).astype(np.int16)
    motion = np.round((nxt - now + 255) / 2).astype(np.uint8)
    return now.astype(np.uint8).transpose(3, 0, 1, 2), motion.transpose(3, 0, 1, 2)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing; expected the official UCF101 train/test lists in {path.parent}")
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({_one_line(e)})") from None


def read_class_index(lists: Path) -> list[str]:
    """classInd.txt ('1 ApplyEyeMakeup' per line) -> class names in label order."""
    path = lists / "classInd.txt"
    rows = []
    for i, ln in enumerate(_read_lines(path), 1):
        parts = ln.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}: line {i} is {ln!r}, expected '<index> <ClassName>'")
        rows.append((int(parts[0]), parts[1]))
    rows.sort()
    if [r[0] for r in rows] != list(range(1, len(rows) + 1)):
        raise DataError(f"{path}: class indices must be 1..{len(rows)} without gaps")
    return [r[1] for r in rows]


_VIDEO = re.compile(r"^[^/]+/v_[^/]+\.avi$", re.IGNORECASE)


def read_split_lists(lists: Path) -> dict[str, list[int]]:
    """{relative video path (lower case): [code per official split]}, codes TRAIN / TEST / 0 (not listed)."""
    member: dict[str, list[int]] = {}
    for s in range(1, N_SPLITS + 1):
        for kind, code in (("train", TRAIN), ("test", TEST)):
            path = lists / f"{kind}list0{s}.txt"
            for i, ln in enumerate(_read_lines(path), 1):
                rel = ln.split()[0].replace("\\", "/")
                if not _VIDEO.match(rel):
                    raise DataError(f"{path}: line {i} is {ln!r}, expected '<Class>/v_<Class>_gXX_cYY.avi'")
                member.setdefault(rel.lower(), [0] * N_SPLITS)[s - 1] = code
    return member


@dataclass(frozen=True)
class UCF101Config(Config):
    frames: int = setting(8, range=gt(0), doc="frames per clip, uniformly spaced over the video")
    split: int = setting(1, range=one_of(1, 2, 3), doc="which official train/test list")


def settings(protocol) -> UCF101Config:
    return UCF101Config(**protocol.dataset_settings)


class UCF101(SidecarInCache, LocalDataset):
    name = NAME
    converter_version = 1
    source_hint = f"the folder holding the official {VIDEOS}/ (the .avi files) and {LISTS}/ (classInd.txt, lists 1-3)"

    def include(self, rel: str) -> bool:
        return (rel.startswith(VIDEOS + "/") and rel.lower().endswith(".avi")) or (
            rel.startswith(LISTS + "/") and rel.endswith(".txt"))

    def cache_params(self, protocol: Protocol) -> dict:
        return {"frames": settings(protocol).frames}

    def stored_spec(self, protocol: Protocol) -> DatasetSpec:
        F = settings(protocol).frames
        return DatasetSpec(NAME, (ModalitySpec("rgb", "video", (3, F, SIZE, SIZE)),
                                  ModalitySpec("motion", "video", (3, F, SIZE, SIZE)),
                                  ModalitySpec("lists", "meta", (N_SPLITS,), "none")), 101)

    def convert(self, root: Path, protocol: Protocol, progress: bool) -> tuple[dict[str, Split], dict]:
        if settings(protocol).frames < 1:
            raise ProtocolError(f"ucf101.frames must be >= 1, got {settings(protocol).frames}")
        classes = read_class_index(root / LISTS)
        by_lower = {c.lower(): i for i, c in enumerate(classes)}
        member = read_split_lists(root / LISTS)
        files = {p.relative_to(root / VIDEOS).as_posix().lower(): p for p in sorted((root / VIDEOS).glob("*/*.avi"))}
        rows = []
        for rel in sorted(member):
            if rel not in files:
                raise DataError(f"{root / VIDEOS / rel}: listed in {root / LISTS} but missing")
            cls = rel.split("/")[0]
            if cls not in by_lower:
                raise DataError(f"{files[rel]}: class folder {cls!r} is not in {root / LISTS / 'classInd.txt'}")
            rows.append((files[rel], by_lower[cls], member[rel]))
        F = settings(protocol).frames
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            clips = pool.map(lambda r: decode_clip(r[0], F), rows)
            if progress:
                from tqdm.auto import tqdm

                clips = tqdm(clips, total=len(rows), desc=f"{NAME}: decoding videos", unit="video")
            rgb, motion = zip(*clips) if rows else ((), ())
        shape = (0, 3, F, SIZE, SIZE)
        split = Split({"rgb": torch.from_numpy(np.stack(rgb) if rgb else np.zeros(shape, np.uint8)),
                       "motion": torch.from_numpy(np.stack(motion) if motion else np.zeros(shape, np.uint8)),
                       "lists": torch.tensor([r[2] for r in rows], dtype=torch.uint8).view(-1, N_SPLITS)},
                      torch.tensor([r[1] for r in rows], dtype=torch.long))
        stats = {"videos": len(rows), "classes": len(classes), "frames": F,
                 "unlisted_files": len(set(files) - set(member))}
        self.save_sidecar({"class_names": classes})
        return {"all": split}, stats

    def select(self, splits: dict[str, Split], protocol: Protocol) -> tuple[DatasetSpec, dict[str, Split]]:
        s = settings(protocol).split
        if not 1 <= s <= N_SPLITS:
            raise ProtocolError(f"ucf101.split must be 1, 2 or 3, got {s}")
        full = splits["all"]
        code = full.data["lists"][:, s - 1]
        g = torch.Generator().manual_seed(protocol.data_seed)
        train_idx = (code == TRAIN).nonzero().squeeze(1)
        test_idx = (code == TEST).nonzero().squeeze(1)
        train_idx = train_idx[torch.randperm(len(train_idx), generator=g)]
        test_idx = test_idx[torch.randperm(len(test_idx), generator=g)]
        if protocol.n_val >= len(train_idx) or len(test_idx) == 0:
            raise DataError(f"{NAME} (split {s}): {len(train_idx)} training and {len(test_idx)} test videos in the "
                            f"source; need more than n_val={protocol.n_val} training and at least one test")
        n_val = protocol.n_val
        idx = {"train": train_idx[n_val:n_val + protocol.n_train], "val": train_idx[:n_val],
               "test": test_idx[:protocol.n_test]}
        keep = {"rgb", "motion"}
        out = {}
        for k, i in idx.items():
            part = full.take(i)
            out[k] = Split({m: v for m, v in part.data.items() if m in keep}, part.labels)
        names = tuple(self.sidecar["class_names"])  # the 101 of classInd.txt
        spec = DatasetSpec(NAME, tuple(m for m in self.stored_spec(protocol).modalities if m.name in keep), len(names),
                           names)
        return spec, out

    def load(self, protocol: Protocol, cache_dir=None) -> LoadedDataset:
        data = super().load(protocol, cache_dir)
        # which official list and how many frames: part of what a run's data (and its classifiers) came from
        data.source = {**data.source, "ucf_split": settings(protocol).split, "ucf_frames": settings(protocol).frames}
        return data


DATASET = UCF101()

PROFILES = {
    "smoke": dict(n_modalities=2),
    # Minutes on 2 CPU cores: 4 frames, a few thousand clips of split 1.
    "quick": dict(n_modalities=2, n_train=3000, n_val=300, n_test=1000, batch_size=32,
                  max_train_samples=9_600, eval_every=1_200, checkpoint_every=200, eval_n=500, joint_n=500, fd_n=500),
    # No published multimodal-VAE recipe exists for UCF101: the shared recipe of the image
    # datasets (batch 128, Adam 5e-4) on all of split 1, 8 frames per clip, on GPUs.
    "paper": dict(n_modalities=2, n_train=9537, n_val=500, n_test=3783, batch_size=128,
                  max_train_samples=3_840_000, eval_every=192_000, lr=5e-4, checkpoint_every=2000, log_every=100,
                  classifier_epochs=10, eval_n=3783, joint_n=5000, fd_n=3783),
}


SOURCE = DatasetSource(
    title="UCF101 (Soomro, Zamir & Shah, 2012), action videos",
    obtain="CRCV, University of Central Florida: https://www.crcv.ucf.edu/data/UCF101.php (open download, no "
           "registration): the videos and the action-recognition train/test lists",
    files=("UCF101.rar (unpack with unrar or 7z; gives UCF-101/)",
           "UCF101TrainTestSplits-RecognitionTask.zip (gives ucfTrainTestlist/)"),
    layout="""<root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
<root>/ucfTrainTestlist/classInd.txt, trainlist01..03.txt, testlist01..03.txt""",
    licence="no licence stated by the source beyond research use; cite Soomro et al. 2012. The clips come from "
            "YouTube",
    size="13,320 clips of 101 actions, about 6.5 GB (UCF101.rar)",
    checksums="none published by the source; `data prepare` checks the layout and names any video it cannot decode",
    required=("UCF-101/*/*.avi", "ucfTrainTestlist/classInd.txt"),
)


@hookimpl
def shala_bench_register_datasets():
    return [DatasetEntry(NAME, DATASET.load, "UCF101 action videos: 64x64 RGB clip + RGB-difference motion, 101 "
                                             "classes; needs `shala-bench data prepare ucf101 --root PATH`",
                         PROFILES, (2, 2), prepare=DATASET.prepare, info=DATASET.info,
                         coherence_chance=1 / 101, source=SOURCE, config=UCF101Config,
                         config_defaults={"smoke": {"frames": 4}, "quick": {"frames": 4}})]
