"""CUB-200-2011 birds (Wah et al., 2011) with the captions of Reed et al. (2016): image and caption.

Source (``--root`` holds both official downloads)::

    CUB_200_2011/images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,
                 images/<class>/<file>.jpg, bounding_boxes.txt (optional)
    text_c10/<class>/<file>.txt     10 captions per image, one per line (Reed et al.;
                                    also found as cvpr2016_cub/text_c10/ or CUB_200_2011/text_c10/)

Conversion (deterministic):
- ``image``: with bounding_boxes.txt, the square of side 1.5 x max(w, h) centred on the
  bird's box (clipped to the image), as StackGAN and AttnGAN crop CUB; without it, the
  centre square. Resized to 64x64 RGB with PIL (bilinear): (3, 64, 64) uint8.
- ``caption``: each of an image's first 10 captions, tokenised by `shala_bench.data.text`
  (words of the *training* captions seen at least 3 times, 32 tokens with <eos> and <pad>).
  *Each (image, caption) pair is one sample*, as in MMVAE / MMVAE+'s CUB image-caption
  setting, so an image appears with each of its 10 captions.
- Labels: the 200 classes of ``classes.txt`` (0-based).
- Splits: the official ``train_test_split.txt``; val = all pairs of a seeded set of
  ceil(``n_val`` / 10) training images (no image is both in train and val), cut to n_val;
  train and test = seeded random subsets of ``n_train`` / ``n_test`` pairs.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from shala_bench.data.prepare import LocalDataset
from shala_bench.data.spec import DatasetSpec, ModalitySpec, Split
from shala_bench.data.text import SidecarInCache, Vocabulary
from shala_bench.errors import DataError
from shala_bench.data.sources import DatasetSource
from shala_bench.hookspecs import hookimpl
from shala_bench.protocol import Protocol
from shala_bench.registry import DatasetEntry

NAME = "cub"
SIZE = 64
CAPTION_LEN = 32
CAPTIONS = 10
MIN_COUNT = 3
BIRDS = "CUB_200_2011"
TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")
TEXT_DIRS = ("text_c10", "cvpr2016_cub/text_c10", f"{BIRDS}/text_c10")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def read_table(path: Path, n_fields: int, optional: bool = False) -> dict[int, list[str]] | None:
    """A CUB metadata table ('<image id> <field> ...' per line) -> {id: fields}."""
    if not path.is_file():
        if optional:
            return None
        raise DataError(f"{path}: missing; expected the CUB-200-2011 metadata tables in {path.parent}")
    out = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({_one_line(e)})") from None
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        parts = ln.split()
        if len(parts) != n_fields + 1 or not parts[0].isdigit():
            raise DataError(f"{path}: line {i} is {ln.strip()!r}, expected '<id>' and {n_fields} field(s)")
        out[int(parts[0])] = parts[1:]
    return out


def crop_box(width: int, height: int, box: list[float] | None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom): 1.5 x max(w, h) square on the box centre, clipped; else the centre square."""
    if box is None:
        s = min(width, height)
        left, top = (width - s) // 2, (height - s) // 2
        return left, top, left + s, top + s
    x, y, w, h = box
    r = int(max(w, h) * 0.75)
    cx, cy = int(x + w / 2), int(y + h / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def load_bird(path: Path, box: list[float] | None) -> np.ndarray:
    """(3, 64, 64) uint8 crop of the image at `path`."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img = img.crop(crop_box(img.width, img.height, box)).resize((SIZE, SIZE), Image.BILINEAR)
            return np.asarray(img).transpose(2, 0, 1)
    except Exception as e:
        raise DataError(f"{path}: unreadable image ({_one_line(e)})") from None


def read_captions(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: missing caption file (Reed et al.'s text_c10 has one per image)")
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError as e:
        raise DataError(f"{path}: unreadable ({_one_line(e)})") from None
    if len(lines) < CAPTIONS:
        raise DataError(f"{path}: {len(lines)} captions, expected {CAPTIONS}")
    return lines[:CAPTIONS]


class CUB(SidecarInCache, LocalDataset):
    name = NAME
    converter_version = 1
    source_hint = f"the folder holding {BIRDS}/ (images.txt, images/, ...) and text_c10/ (Reed et al.'s captions)"

    def include(self, rel: str) -> bool:
        if rel.startswith(f"{BIRDS}/images/"):
            return rel.lower().endswith(".jpg")
        if any(rel.startswith(d + "/") for d in TEXT_DIRS):
            return rel.endswith(".txt")
        return rel in {f"{BIRDS}/{t}" for t in TABLES}

    def stored_spec(self, protocol: Protocol) -> DatasetSpec:
        return DatasetSpec(NAME, (ModalitySpec("image", "image", (3, SIZE, SIZE)),
                                  ModalitySpec("captions", "text", (CAPTIONS, CAPTION_LEN), "categorical")), 200)

    def convert(self, root: Path, protocol: Protocol, progress: bool) -> tuple[dict[str, Split], dict]:
        birds = root / BIRDS
        images = read_table(birds / "images.txt", 1)
        labels = read_table(birds / "image_class_labels.txt", 1)
        is_train = read_table(birds / "train_test_split.txt", 1)
        classes = read_table(birds / "classes.txt", 1)
        boxes = read_table(birds / "bounding_boxes.txt", 4, optional=True)
        text_dir = next((root / d for d in TEXT_DIRS if (root / d).is_dir()), None)
        if text_dir is None:
            raise DataError(f"{root / 'text_c10'}: missing; expected Reed et al.'s CUB captions (text_c10/) in {root}")
        for path, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            if set(table) != set(images):
                raise DataError(f"{birds / path}: lists {len(table)} images, images.txt lists {len(images)}")
        names = [classes[k][0] for k in sorted(classes)]
        rows = []
        for k in sorted(images):
            rel = images[k][0]
            cls = int(labels[k][0])
            if not 1 <= cls <= len(names):
                raise DataError(f"{birds / 'image_class_labels.txt'}: image {k} has class {cls}, not in classes.txt")
            flag = is_train[k][0]
            if flag not in ("0", "1"):
                raise DataError(f"{birds / 'train_test_split.txt'}: image {k} has {flag!r}, expected 1 or 0")
            box = [float(v) for v in boxes[k]] if boxes is not None and k in boxes else None
            rows.append({"image": birds / "images" / rel, "text": text_dir / Path(rel).with_suffix(".txt"),
                         "label": cls - 1, "train": flag == "1", "box": box})
        captions = [read_captions(r["text"]) for r in rows]
        vocab = Vocabulary.build((c for r, cs in zip(rows, captions) if r["train"] for c in cs), min_count=MIN_COUNT)
        self.save_sidecar({"vocabulary": list(vocab.words), "class_names": names})
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            pixels = pool.map(lambda r: load_bird(r["image"], r["box"]), rows)
            if progress:
                from tqdm.auto import tqdm

                pixels = tqdm(pixels, total=len(rows), desc=f"{NAME}: reading images", unit="image")
            pixels = list(pixels)
        out = {}
        for split, flag in (("train", True), ("test", False)):
            idx = [i for i, r in enumerate(rows) if r["train"] == flag]
            caps = vocab.encode_many((c for i in idx for c in captions[i]), CAPTION_LEN).reshape(-1, CAPTIONS, CAPTION_LEN)
            out[split] = Split({"image": torch.from_numpy(np.stack([pixels[i] for i in idx]) if idx
                                                          else np.zeros((0, 3, SIZE, SIZE), np.uint8)),
                                "captions": torch.from_numpy(caps)},
                               torch.tensor([rows[i]["label"] for i in idx], dtype=torch.long))
        stats = {"images": len(rows), "pairs": CAPTIONS * len(rows), "bounding_boxes": boxes is not None,
                 "captions_from": str(text_dir.relative_to(root)), "vocabulary_size": vocab.size}
        return out, stats

    def select(self, splits: dict[str, Split], protocol: Protocol) -> tuple[DatasetSpec, dict[str, Split]]:
        g = torch.Generator().manual_seed(protocol.data_seed)

        def pairs(split: Split, images: torch.Tensor, n: int) -> Split:
            """n random (image, caption) pairs among all captions of `images`."""
            img = images.repeat_interleave(CAPTIONS)
            cap = torch.arange(CAPTIONS).repeat(len(images))
            pick = torch.randperm(len(img), generator=g)[:n]
            img, cap = img[pick], cap[pick]
            return Split({"image": split.data["image"][img], "caption": split.data["captions"][img, cap]},
                         split.labels[img])

        train, test = splits["train"], splits["test"]
        order = torch.randperm(len(train), generator=g)
        n_val_images = math.ceil(protocol.n_val / CAPTIONS)
        if n_val_images >= len(train) or len(test) == 0:
            raise DataError(f"{NAME}: {len(train)} training and {len(test)} test images in the source; need more than "
                            f"ceil(n_val / {CAPTIONS}) = {n_val_images} training images and at least one test image")
        out = {"train": pairs(train, order[n_val_images:], protocol.n_train),
               "val": pairs(train, order[:n_val_images], protocol.n_val),
               "test": pairs(test, torch.arange(len(test)), protocol.n_test)}
        mods = (ModalitySpec("image", "image", (3, SIZE, SIZE)),
                ModalitySpec("caption", "text", (CAPTION_LEN,), "categorical", self.vocabulary.size))
        names = tuple(self.sidecar["class_names"])  # the 200 of classes.txt
        return DatasetSpec(NAME, mods, len(names), names), out


DATASET = CUB()

PROFILES = {
    "smoke": dict(n_modalities=2),
    # Minutes on 2 CPU cores.
    "quick": dict(n_modalities=2, n_train=8000, n_val=500, n_test=1000, batch_size=64, max_train_samples=25_600,
                  eval_every=3_200, checkpoint_every=200, eval_n=500, joint_n=500, fd_n=500),
    # For GPUs: every (image, caption) pair, batch 64, Adam 1e-3. Our choice, in the spirit of the MMVAE /
    # MMVAE+ CUB image-caption experiments; not checked against their published hyper-parameters.
    "paper": dict(n_modalities=2, n_train=59940, n_val=500, n_test=57940, batch_size=64, max_train_samples=2_880_000,
                  eval_every=144_000, lr=1e-3, checkpoint_every=2000, log_every=100, classifier_epochs=10,
                  eval_n=5000, joint_n=5000, fd_n=5000),
}


SOURCE = DatasetSource(
    title="CUB-200-2011 (Wah et al., 2011) with the captions of Reed et al. (CVPR 2016)",
    obtain="images: Caltech, https://www.vision.caltech.edu/datasets/cub_200_2011/ (open download); captions: "
           "the cvpr2016_cub data linked from https://github.com/reedscot/cvpr2016 (its text_c10 folder)",
    files=("CUB_200_2011.tgz", "cvpr2016_cub.tar.gz (only text_c10/ is read)"),
    layout="""<root>/CUB_200_2011/images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,
    images/<class>/<file>.jpg, bounding_boxes.txt
<root>/text_c10/<class>/<file>.txt   (or cvpr2016_cub/text_c10/, CUB_200_2011/text_c10/)""",
    licence="images collected from Flickr, for non-commercial research and educational use (see the Caltech "
            "page); captions as released by Reed et al.",
    size="11,788 images of 200 species (CUB_200_2011.tgz about 1.1 GB), 10 captions per image",
    checksums="none published by the source; `data prepare` checks the layout and that every image has its "
              "captions",
    required=("CUB_200_2011/images.txt", "CUB_200_2011/images"),
)


@hookimpl
def shala_bench_register_datasets():
    return [DatasetEntry(NAME, DATASET.load, "CUB-200-2011 birds: 64x64 image + one of Reed et al.'s 10 captions "
                                             "per sample, 200 classes; needs `shala-bench data prepare cub --root PATH`",
                         PROFILES, (2, 2), prepare=DATASET.prepare, info=DATASET.info,
                         coherence_chance=1 / 200, source=SOURCE)]
