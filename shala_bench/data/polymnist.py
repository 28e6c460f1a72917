"""PolyMNIST from the official files (Sutter et al., ICLR 2021), converted once with `shala-bench data prepare`.

Source: the PolyMNIST release as written by MoPoE's ``MMNISTDataset._create_mmnist_dataset``:
``<root>/train/m0..m4/{index}.{label}.png`` and ``<root>/test/m0..m4/{index}.{label}.png``,
28x28 RGB images, five modalities (MNIST digits composited on five different background
images). Inside one digit class, file ``{index}.{label}.png`` of every modality shows the
same digit label, and a tuple is the five files with the same name; `index` restarts at 0
for every label, so the pairing key is the whole stem ``{index}.{label}`` — never the order
of a directory listing (which the reference loader relies on). A name present in one
modality folder and missing in another is an error naming the missing file.

Stored: the train and test tuples of all five modalities (uint8), whatever the protocol.
A run takes the first `n_modalities` modalities; its val split is a seeded slice of
`n_val` train tuples (taken out of train); train and test are seeded subsets of at most
`n_train` / `n_test` tuples (all of them when the source has fewer).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from shala_bench.data.prepare import LocalDataset
from shala_bench.data.spec import DatasetSpec, ModalitySpec, Split
from shala_bench.errors import DataError
from shala_bench.data.sources import DatasetSource
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import DatasetEntry

NAME = "polymnist"
N_MODALITIES = 5
SPLITS = ("train", "test")
_FILE = re.compile(r"^(\d+)\.(\d)\.png$")
_SOURCE_FILE = re.compile(r"^(train|test)/m[0-4]/[^/]+\.png$")


def spec_for(n_modalities: int) -> DatasetSpec:
    mods = tuple(ModalitySpec(f"m{i}", "image", (3, 28, 28), "laplace") for i in range(n_modalities))
    return DatasetSpec(NAME, mods, 10, tuple(str(d) for d in range(10)))


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.size != (28, 28):
                raise DataError(f"{path}: expected a 28x28 image, got {im.size[0]}x{im.size[1]}")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)  # (3, 28, 28)
    except DataError:
        raise
    except Exception as e:  # truncated or not a PNG: one line naming the file
        raise DataError(f"{path}: cannot read PNG ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def tuple_keys(split_dir: Path) -> list[tuple[int, int]]:
    """The (index, label) keys of the tuples in train/ or test/, checked to exist in every modality."""
    names: dict[int, set[str]] = {}
    for m in range(N_MODALITIES):
        folder = split_dir / f"m{m}"
        if not folder.is_dir():
            raise DataError(f"{folder}: missing modality folder (PolyMNIST has m0..m4 under train/ and test/)")
        found = set()
        for p in folder.iterdir():
            if p.suffix == ".png":
                if not _FILE.match(p.name):
                    raise DataError(f"{p}: not a PolyMNIST file name; expected {{index}}.{{label}}.png")
                found.add(p.name)
        names[m] = found
    union = set().union(*names.values())
    for m in range(N_MODALITIES):
        missing = sorted(union - names[m])
        if missing:
            other = next(k for k in range(N_MODALITIES) if missing[0] in names[k])
            raise DataError(f"{split_dir / f'm{m}' / missing[0]}: missing (m{other} has it; a tuple needs the file in "
                            f"every modality)" + (f"; {len(missing) - 1} more missing in m{m}" if len(missing) > 1 else ""))
    keys = [tuple(int(g) for g in _FILE.match(n).groups()) for n in union]
    return sorted(keys)  # by (index, label): independent of listing order


class PolyMNIST(LocalDataset):
    name = NAME
    converter_version = 1
    source_hint = "the PolyMNIST folder holding train/m0..m4 and test/m0..m4 ({index}.{label}.png files)"

    def include(self, rel: str) -> bool:
        return bool(_SOURCE_FILE.match(rel))

    def stored_spec(self, protocol) -> DatasetSpec:
        return spec_for(N_MODALITIES)

    def convert(self, root: Path, protocol, progress: bool) -> tuple[dict[str, Split], dict]:
        keys = {s: tuple_keys(root / s) for s in SPLITS}
        out = {}
        with tqdm(total=sum(len(k) for k in keys.values()) * N_MODALITIES, desc=f"{NAME}: reading PNGs",
                  unit="img", disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
            for s in SPLITS:
                if not keys[s]:
                    raise DataError(f"{root / s}: no PolyMNIST images")
                data = {}
                for m in range(N_MODALITIES):
                    arr = np.empty((len(keys[s]), 3, 28, 28), dtype=np.uint8)
                    for i, (index, label) in enumerate(keys[s]):
                        arr[i] = _read_png(root / s / f"m{m}" / f"{index}.{label}.png")
                        bar.update(1)
                    data[f"m{m}"] = torch.from_numpy(arr)
                out[s] = Split(data, torch.tensor([label for _, label in keys[s]], dtype=torch.long))
        return out, {"tuples": {s: len(k) for s, k in keys.items()}}

    def select(self, splits: dict[str, Split], protocol) -> tuple[DatasetSpec, dict[str, Split]]:
        M = protocol.n_modalities
        mods = [f"m{i}" for i in range(M)]
        train, test = splits["train"], splits["test"]
        if protocol.n_val >= len(train):
            raise DataError(f"{NAME}: n_val={protocol.n_val} leaves no training tuples (the source has {len(train)}); "
                            f"use --set n_val=N with N < {len(train)}")
        g = torch.Generator().manual_seed(protocol.data_seed)
        perm = torch.randperm(len(train), generator=g)
        val_idx, train_idx = perm[:protocol.n_val], perm[protocol.n_val:][:protocol.n_train]
        test_idx = torch.randperm(len(test), generator=g)[:protocol.n_test]

        def cut(split: Split, idx: torch.Tensor) -> Split:
            return Split({m: split.data[m][idx] for m in mods}, split.labels[idx])

        return spec_for(M), {"train": cut(train, train_idx), "val": cut(train, val_idx), "test": cut(test, test_idx)}


DATASET = PolyMNIST()

PROFILES = {
    "smoke": dict(n_modalities=3),
    # Minutes on a 2-core CPU: the polymnist-synth quick recipe on the real images.
    "quick": dict(n_modalities=5, n_train=10000, n_val=500, n_test=2000, batch_size=128, max_train_samples=76_800,
                  eval_every=9_600, lr=1e-3, checkpoint_every=200, eval_n=1000, joint_n=1000, fd_n=1000),
    # The MoPoE PolyMNIST recipe (Sutter et al. 2021, job_polymnist): all 60,000 training tuples (no
    # val), batch 256, Adam 5e-4, beta 2.5, Laplace likelihoods, 300 epochs = 300 x 234 steps; the
    # full 10,000-tuple test set. MMVAE+ (Palumbo et al. 2023) uses the same data, beta 2.5 and K = 1.
    "paper": dict(n_modalities=5, n_train=60000, n_val=0, n_test=10000, batch_size=256, max_train_samples=17_971_200,
                  eval_every=898_560, lr=5e-4, beta=2.5, checkpoint_every=2000, log_every=100, classifier_epochs=10,
                  eval_n=10000, joint_n=10000, fid_n=10000, fd_n=10000),
}


SOURCE = DatasetSource(
    title="PolyMNIST (Sutter, Daunhawer & Vogt, ICLR 2021, the MoPoE paper)",
    obtain="the PolyMNIST archive linked from the README of the authors' MoPoE repository, "
           "https://github.com/thomassutter/MoPoE (a Zenodo download, no registration); or generate it with that "
           "repository's script (MMNISTDataset._create_mmnist_dataset) from MNIST and its five background images",
    files=("PolyMNIST.zip (unpack it; it holds train/ and test/)",),
    layout="""<root>/train/m0 .. m4/{index}.{label}.png
<root>/test/m0 .. m4/{index}.{label}.png""",
    licence="as stated on the release page and the MoPoE repository; MNIST is by LeCun, Cortes & Burges. Open "
            "download",
    size="60,000 train and 10,000 test tuples of five 28x28 RGB PNGs (350,000 small files)",
    checksums="none published by the source; `data prepare` checks the layout and that every tuple is complete",
    required=("train/m0/*.png", "test/m0/*.png"),
)


@hookimpl
def shala_bench_register_datasets():
    return [DatasetEntry(NAME, DATASET.load, "PolyMNIST (official PNG release, 5 modalities, 10 digits); "
                                             "needs `shala-bench data prepare polymnist --root PATH`",
                         PROFILES, (2, N_MODALITIES), prepare=DATASET.prepare, info=DATASET.info,
                         coherence_chance=1 / 10, source=SOURCE)]
