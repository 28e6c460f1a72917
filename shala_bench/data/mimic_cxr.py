"""MIMIC-CXR (Johnson et al., 2019): frontal and lateral chest X-rays with their report, CheXpert findings.

Source (``--root`` = the MIMIC-CXR-JPG 2.0.0 folder, with the MIMIC-CXR reports unpacked into it;
credentialed access, never downloaded here)::

    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train / validate / test)
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id and the 14 CheXpert findings
    files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg
    files/pXX/pNNNNNNNN/sNNNNNNNN.txt   the free-text report of the study

Conversion, as in MoPoE's MIMIC-CXR setting (Sutter et al., 2021): one sample per *study*
that has a frontal image, a lateral image and a report, each present on disk.
- ``frontal``: the study's first PA image, else its first AP image (by dicom_id);
  ``lateral``: its first LATERAL image, else its first LL image. Grayscale, the whole
  image resized to 64x64 with PIL (bilinear, after JPEG draft-mode downscaling): (1, 64, 64).
- ``text``: the report's FINDINGS and IMPRESSION sections (in that order; a study whose
  report has neither is skipped), tokenised by `shala_bench.data.text`: the 2,000
  most frequent words (specials included) of the *training* reports among those seen at
  least 3 times, 64 tokens with <eos> and <pad> (the categorical likelihood costs L x V
  per report, so both are kept small).
- Labels: the 14 CheXpert findings, multi-label. 1 -> positive; 0 (negative), -1
  (uncertain) and blank (not mentioned) -> negative (the "U-Zeros" mapping of Irvin et al.);
  a study without a CheXpert row has no positive finding.
- Splits: the official split of the frontal image (train / validate -> val / test);
  a run takes a seeded random subset of ``n_train`` / ``n_val`` / ``n_test`` studies of each.
- ``n_modalities`` 2 keeps the two views only; 3 adds the report.
Studies skipped (missing view, image or report) are counted in the converter report.
"""

from __future__ import annotations

import os
import re
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

NAME = "mimic-cxr"
SIZE = 64
REPORT_LEN = 64
MIN_COUNT = 3
MAX_VOCAB = 2000
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
            "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
            "Pneumothorax", "Support Devices")
CSV = {"metadata": ("dicom_id", "subject_id", "study_id", "ViewPosition"),
       "split": ("dicom_id", "study_id", "subject_id", "split"),
       "chexpert": ("subject_id", "study_id") + FINDINGS}
FRONTAL, LATERAL = ("PA", "AP"), ("LATERAL", "LL")
CHEXPERT_VALUES = {"1", "1.0", "0", "0.0", "-1", "-1.0"}
SPLITS = {"train": "train", "validate": "val", "test": "test"}
MODALITIES = ("frontal", "lateral", "text")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def csv_path(root: Path, which: str) -> Path:
    for suffix in (".csv", ".csv.gz"):
        path = root / f"mimic-cxr-2.0.0-{which}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"{root / f'mimic-cxr-2.0.0-{which}.csv'}: missing (also looked for .csv.gz); "
                    f"expected the MIMIC-CXR-JPG 2.0.0 tables in {root}")


def read_csv(root: Path, which: str):
    import pandas as pd

    path = csv_path(root, which)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for a malformed file
        raise DataError(f"{path}: unreadable CSV ({_one_line(e)})") from None
    missing = [c for c in CSV[which] if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV[which])}")
    return path, df


_HEADER = re.compile(r"^\s*([A-Z][A-Z /&]+):", re.MULTILINE)


def report_sections(text: str) -> str:
    """The FINDINGS and IMPRESSION sections of a report, in that order ('' if it has neither)."""
    heads = list(_HEADER.finditer(text))
    parts = {}
    for i, h in enumerate(heads):
        name = h.group(1).strip()
        if name in ("FINDINGS", "IMPRESSION") and name not in parts:
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            parts[name] = " ".join(text[h.end():end].split())
    return " ".join(parts[k] for k in ("FINDINGS", "IMPRESSION") if parts.get(k))


def load_xray(path: Path) -> np.ndarray:
    """A JPEG as (1, 64, 64) uint8 grayscale, the whole image resized."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("L", (2 * SIZE, 2 * SIZE))  # JPEG DCT downscaling: decodes big X-rays fast
            return np.asarray(img.convert("L").resize((SIZE, SIZE), Image.BILINEAR))[None]
    except Exception as e:
        raise DataError(f"{path}: unreadable image ({_one_line(e)})") from None


def _study_dir(root: Path, subject: str, study: str) -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


class MimicCXR(SidecarInCache, LocalDataset):
    name = NAME
    converter_version = 1
    source_hint = ("the MIMIC-CXR-JPG 2.0.0 folder (mimic-cxr-2.0.0-{metadata,split,chexpert}.csv[.gz], files/) "
                   "with the report .txt files under files/")

    def include(self, rel: str) -> bool:
        if rel.startswith("files/"):
            return rel.endswith(".jpg") or rel.endswith(".txt")
        return rel.startswith("mimic-cxr-2.0.0-") and (rel.endswith(".csv") or rel.endswith(".csv.gz"))

    def stored_spec(self, protocol: Protocol) -> DatasetSpec:
        return DatasetSpec(NAME, (ModalitySpec("frontal", "image", (1, SIZE, SIZE)),
                                  ModalitySpec("lateral", "image", (1, SIZE, SIZE)),
                                  ModalitySpec("text", "text", (REPORT_LEN,), "categorical")),
                           len(FINDINGS), FINDINGS, multilabel=True)

    # ------------------------------------------------------------ conversion
    def _studies(self, root: Path) -> tuple[list[dict], dict]:
        """One row per usable study (chosen images, report text, split, findings) and the counts of skips."""
        _, meta = read_csv(root, "metadata")
        split_path, split = read_csv(root, "split")
        chex_path, chex = read_csv(root, "chexpert")
        split_of = dict(zip(split["dicom_id"], split["split"]))
        bad = sorted(set(split_of.values()) - set(SPLITS))
        if bad:
            raise DataError(f"{split_path}: unknown split value(s) {', '.join(map(repr, bad[:3]))}; "
                            f"expected {', '.join(SPLITS)}")
        labels = {}
        for subj, st, *vals in zip(chex["subject_id"], chex["study_id"], *(chex[f] for f in FINDINGS)):
            values = [v.strip() for v in vals]
            if any(v and v not in CHEXPERT_VALUES for v in values):
                raise DataError(f"{chex_path}: study {st} has a finding that is not 1, 0, -1 or blank: {vals}")
            labels[(subj, st)] = [int(v in ("1", "1.0")) for v in values]  # U-Zeros: 0, -1 and blank -> 0
        views: dict[tuple[str, str], dict[str, list[tuple[int, str]]]] = {}
        for d, subj, st, view in zip(meta["dicom_id"], meta["subject_id"], meta["study_id"], meta["ViewPosition"]):
            kind = "frontal" if view in FRONTAL else "lateral" if view in LATERAL else None
            if kind is not None:
                rank = (FRONTAL if kind == "frontal" else LATERAL).index(view)
                views.setdefault((subj, st), {"frontal": [], "lateral": []})[kind].append((rank, d))
        skipped = {"no_frontal_or_lateral": 0, "missing_image_file": 0, "missing_report": 0,
                   "report_without_findings_or_impression": 0, "no_split": 0}
        without_chexpert = 0
        rows = []
        for (subj, st), v in sorted(views.items()):
            if not v["frontal"] or not v["lateral"]:
                skipped["no_frontal_or_lateral"] += 1
                continue
            folder = _study_dir(root, subj, st)
            front, lat = min(v["frontal"])[1], min(v["lateral"])[1]
            paths = (folder / f"{front}.jpg", folder / f"{lat}.jpg")
            if not all(p.is_file() for p in paths):
                skipped["missing_image_file"] += 1
                continue
            report = folder.with_suffix(".txt")
            if not report.is_file():
                skipped["missing_report"] += 1
                continue
            try:
                text = report_sections(report.read_text(errors="replace"))
            except OSError as e:
                raise DataError(f"{report}: unreadable report ({_one_line(e)})") from None
            if not text:
                skipped["report_without_findings_or_impression"] += 1
                continue
            if front not in split_of:
                skipped["no_split"] += 1
                continue
            without_chexpert += (subj, st) not in labels
            rows.append({"paths": paths, "text": text, "split": SPLITS[split_of[front]],
                         "labels": labels.get((subj, st), [0] * len(FINDINGS))})
        return rows, {"skipped": skipped, "kept_without_chexpert_row": without_chexpert}

    def convert(self, root: Path, protocol: Protocol, progress: bool) -> tuple[dict[str, Split], dict]:
        rows, counts = self._studies(root)
        if not rows:
            raise DataError(f"{root}: no study has a frontal image, a lateral image and a report with findings or "
                            f"impression ({', '.join(f'{k}: {v}' for k, v in counts['skipped'].items())})")
        vocab = Vocabulary.build((r["text"] for r in rows if r["split"] == "train"), MIN_COUNT, MAX_VOCAB)
        self.save_sidecar({"vocabulary": list(vocab.words)})
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            images = pool.map(lambda r: (load_xray(r["paths"][0]), load_xray(r["paths"][1])), rows)
            if progress:
                from tqdm.auto import tqdm

                images = tqdm(images, total=len(rows), desc=f"{NAME}: reading X-rays", unit="study")
            images = list(images)
        out = {}
        for split in ("train", "val", "test"):
            idx = [i for i, r in enumerate(rows) if r["split"] == split]
            empty = np.zeros((0, 1, SIZE, SIZE), np.uint8)
            out[split] = Split({
                "frontal": torch.from_numpy(np.stack([images[i][0] for i in idx]) if idx else empty),
                "lateral": torch.from_numpy(np.stack([images[i][1] for i in idx]) if idx else empty),
                "text": torch.from_numpy(vocab.encode_many((rows[i]["text"] for i in idx), REPORT_LEN)),
            }, torch.tensor([rows[i]["labels"] for i in idx], dtype=torch.long).view(-1, len(FINDINGS)))
        stats = {"studies": len(rows), **counts, "vocabulary_size": vocab.size,
                 "splits": {k: len(v) for k, v in out.items()}}
        return out, stats

    # ------------------------------------------------------------ a run's view
    def select(self, splits: dict[str, Split], protocol: Protocol) -> tuple[DatasetSpec, dict[str, Split]]:
        keep = MODALITIES[:protocol.n_modalities]
        g = torch.Generator().manual_seed(protocol.data_seed)
        out = {}
        for split, n in (("train", protocol.n_train), ("val", protocol.n_val), ("test", protocol.n_test)):
            s = splits[split]
            idx = torch.randperm(len(s), generator=g)[:n]
            part = s.take(idx)
            out[split] = Split({m: part.data[m] for m in keep}, part.labels)
        if len(out["train"]) == 0 or len(out["test"]) == 0:
            raise DataError(f"{NAME}: the prepared source has {len(out['train'])} training and {len(out['test'])} "
                            f"test studies with both views and a report; a run needs some of each")
        stored = self.stored_spec(protocol)
        mods = tuple(ModalitySpec(m.name, m.kind, m.shape, m.likelihood, self.vocabulary.size if m.kind == "text" else 0)
                     for m in stored.modalities if m.name in keep)
        return DatasetSpec(NAME, mods, len(FINDINGS), FINDINGS, multilabel=True), out


DATASET = MimicCXR()

PROFILES = {
    "smoke": dict(n_modalities=3),
    # Minutes on 2 CPU cores.
    "quick": dict(n_modalities=3, n_train=4000, n_val=200, n_test=1000, batch_size=32, max_train_samples=9_600,
                  eval_every=1_200, checkpoint_every=200, eval_n=500, joint_n=500, fd_n=500),
    # For GPUs: every usable study, batch 128, Adam 5e-4. Our choice for MoPoE's MIMIC-CXR setting at
    # 64x64; not checked against the hyper-parameters MoPoE published for it.
    "paper": dict(n_modalities=3, n_train=1_000_000, n_val=1_000_000, n_test=1_000_000, batch_size=128,
                  max_train_samples=7_680_000, eval_every=384_000, lr=5e-4, checkpoint_every=2000, log_every=100,
                  classifier_epochs=10, eval_n=5000, joint_n=5000, fd_n=5000),
}


SOURCE = DatasetSource(
    title="MIMIC-CXR-JPG 2.0.0 with the MIMIC-CXR 2.0.0 reports (Johnson et al., 2019)",
    obtain="PhysioNet, CREDENTIALED access: create a PhysioNet account, complete the required CITI training "
           "(Data or Specimens Only Research), get credentialed, sign the data use agreement of both projects, "
           "then download https://physionet.org/content/mimic-cxr-jpg/2.0.0/ (images, CSVs) and the reports "
           "(mimic-cxr-reports.zip) from https://physionet.org/content/mimic-cxr/2.0.0/. Never downloaded here",
    files=("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz",
           "files/ (the JPG images)", "mimic-cxr-reports.zip (unpack into the same root: files/pXX/pN/sN.txt)",
           "SHA256SUMS.txt (the project's checksum list)"),
    layout="""<root>/mimic-cxr-2.0.0-{metadata,split,chexpert}.csv[.gz]
<root>/files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg
<root>/files/pXX/pNNNNNNNN/sNNNNNNNN.txt   (the reports)
<root>/SHA256SUMS.txt""",
    licence="PhysioNet Credentialed Health Data License 1.5.0 and its data use agreement: no sharing of the data, "
            "no attempt to re-identify; results may be published",
    size="377,110 JPG images of 227,835 studies, about 570 GB (MIMIC-CXR-JPG); the reports zip is small",
    checksums="PhysioNet publishes SHA256SUMS.txt per project version; `data prepare` verifies the CSV files "
              "against it when it is in --root (hashing 570 GB of images is left to `sha256sum -c`)",
    required=("mimic-cxr-2.0.0-metadata.csv*", "mimic-cxr-2.0.0-split.csv*", "files"),
    checksum_list="SHA256SUMS.txt",
    checksum_globs=("*.csv.gz", "*.csv"),
)


@hookimpl
def shala_bench_register_datasets():
    return [DatasetEntry(NAME, DATASET.load, "MIMIC-CXR-JPG studies: frontal + lateral 64x64 X-ray + report text, "
                                             "14 CheXpert findings (multi-label); needs "
                                             "`shala-bench data prepare mimic-cxr --root PATH`",
                         PROFILES, (2, 3), prepare=DATASET.prepare, info=DATASET.info, source=SOURCE,
                         selection="bound")]  # multi-label: early stopping reads the validation bound
