"""MIMIC-CXR-JPG from its official tables, images and reports: study selection, labels, text, cache, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shala_bench.data import mimic_cxr
from shala_bench.data.text import EOS, PAD
from shala_bench.errors import DataError
from shala_bench.metrics.coherence import mean_auroc
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry

FINDINGS = mimic_cxr.FINDINGS
EFFUSION = FINDINGS.index("Pleural Effusion")
NO_FINDING = FINDINGS.index("No Finding")
SICK = "FINDINGS: there is a small left pleural effusion.\n\nIMPRESSION: left pleural effusion."
WELL = "FINDINGS: the lungs are clear.\n\nIMPRESSION: no acute process."


def write_jpeg(path: Path, level: int, size=(96, 80)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], level, np.uint8), "L").save(path, quality=95)


def make_mimic(root: Path, drop_column: str | None = None) -> Path:
    """12 complete studies (6 train, 3 validate, 3 test) plus three that must be skipped."""
    meta, split, chex = [], [], []
    for i in range(15):
        subj, st = f"{10000000 + i}", f"{50000000 + i}"
        folder = root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{st}"
        sick = i % 2 == 0
        sp = "train" if i < 6 else "validate" if i < 9 else "test"
        views = [("AP", 200), ("PA", 40 + 10 * i), ("LATERAL", 120 + 5 * i)]  # PA wins over AP
        if i == 12:
            views = [("PA", 40)]  # no lateral view: skipped
        if i == 13:
            views = [("AP", 60), ("LL", 150)]  # AP and LL are the fallbacks
        for j, (view, level) in enumerate(views):
            d = f"d{i:02d}{j}"
            write_jpeg(folder / f"{d}.jpg", level)
            meta.append(f"{d},{subj},{st},{view}")
            split.append(f"{d},{st},{subj},{sp}")
        report = SICK if sick else WELL
        if i == 14:
            report = "INDICATION: cough.\nCOMPARISON: none."  # neither findings nor impression: skipped
        folder.with_suffix(".txt").write_text("                                 FINAL REPORT\n" + report + "\n")
        labels = {EFFUSION: "1.0" if sick else ("-1.0" if i % 4 == 1 else ""), NO_FINDING: "" if sick else "1.0"}
        chex.append(",".join([subj, st] + [labels.get(k, "0.0" if k == 0 else "") for k in range(len(FINDINGS))]))
    meta_cols = "dicom_id,subject_id,study_id,ViewPosition"
    if drop_column:
        meta_cols = meta_cols.replace(drop_column, "Something")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(meta_cols + "\n" + "\n".join(meta) + "\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\n" + "\n".join(split) + "\n")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text("subject_id,study_id," + ",".join(FINDINGS) + "\n"
                                                         + "\n".join(chex) + "\n")
    return root


def smoke_protocol(**overrides):
    return make_protocol(get_registry().get_dataset("mimic-cxr"), "smoke", overrides)


def test_report_sections_keep_findings_then_impression():
    text = "EXAMINATION: chest\nIMPRESSION:  No acute\n process.\nFINDINGS: Lungs clear.\nNOTIFICATION: called"
    assert mimic_cxr.report_sections(text) == "Lungs clear. No acute process."
    assert mimic_cxr.report_sections("INDICATION: cough") == ""


def test_mean_auroc_averages_findings_and_skips_constant_ones():
    from sklearn.metrics import roc_auc_score

    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    logits = torch.tensor([[2.0, 0.1, 0.0], [1.0, 0.2, 0.0], [0.5, 0.3, 0.0], [-1.0, 0.4, 0.0]])
    expected = roc_auc_score([1, 0, 1, 0], torch.sigmoid(logits[:, 0]).numpy())  # findings 2 and 3 are constant
    assert mean_auroc(logits, labels) == pytest.approx(expected) == pytest.approx(0.75)


def test_multilabel_joint_coherence_is_the_per_finding_agreement_of_all_modalities():
    from types import SimpleNamespace

    from shala_bench.data.spec import DatasetSpec, ModalitySpec
    from shala_bench.metrics.coherence import joint_coherence

    # classifiers that return their input as the 3 finding logits; decisions are logit > 0
    out = {"a": torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]]), "b": torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]])}
    spec = DatasetSpec("x", tuple(ModalitySpec(m, "skeleton", (3,), "gaussian") for m in out), 3, multilabel=True)
    ident = torch.nn.Identity()
    ctx = SimpleNamespace(model=SimpleNamespace(modalities=["a", "b"], sample=lambda n: out),
                          protocol=SimpleNamespace(joint_n=2), data=SimpleNamespace(spec=spec),
                          classifiers={"a": (ident, 1.0), "b": (ident, 1.0)})
    # sample 0 agrees on findings 1 and 3, sample 1 on findings 2 and 3: 2/3 each
    assert joint_coherence(ctx)["coherence_joint"] == pytest.approx(2 / 3)


def test_prepare_selects_views_maps_uncertain_labels_to_negative_and_encodes_reports(tmp_path):
    root = make_mimic(tmp_path / "src")
    cache = tmp_path / "cache"
    report = mimic_cxr.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert report["splits"] == {"train": 6, "val": 3, "test": 4}  # studies 12 and 14 are skipped
    skipped = report["converter_report"]["skipped"]
    assert skipped["no_frontal_or_lateral"] == 1 and skipped["report_without_findings_or_impression"] == 1
    data = mimic_cxr.DATASET.load(smoke_protocol(n_val=3), cache)
    assert data.spec.multilabel and data.spec.n_classes == 14 and data.spec.names == ["frontal", "lateral", "text"]
    vocab = mimic_cxr.DATASET.vocabulary
    assert data.spec.modality("text").vocab_size == vocab.size
    train = data.splits["train"]
    def levels(split, view):
        return sorted(data.splits[split].data[view].float().mean(dim=(1, 2, 3)).round().tolist())

    # study i: PA at level 40 + 10 i is chosen over its AP (200); lateral at 120 + 5 i;
    # study 13 (test) has only AP (60) and LL (150), the fallbacks
    assert levels("train", "frontal") == [40 + 10 * i for i in range(6)]
    assert levels("train", "lateral") == [120 + 5 * i for i in range(6)]
    assert levels("test", "frontal") == [60, 130, 140, 150] and levels("test", "lateral") == [150, 165, 170, 175]
    views_only = mimic_cxr.DATASET.load(smoke_protocol(n_val=3, n_modalities=2), cache)
    assert views_only.spec.names == ["frontal", "lateral"] and set(views_only.splits["train"].data) == {"frontal", "lateral"}
    for row, text in zip(train.labels, train.data["text"]):
        sick = bool(row[EFFUSION])
        assert row.sum() == 1 and bool(row[NO_FINDING]) != sick  # -1 (uncertain) and blank -> 0
        words = vocab.decode(text.tolist())
        assert words == ("there is a small left pleural effusion . left pleural effusion ." if sick
                         else "the lungs are clear . no acute process .")
        n = int((text != PAD).sum())
        assert text[n - 1] == EOS and text.shape == (mimic_cxr.REPORT_LEN,)


def test_prepare_then_smoke_training_and_multilabel_evaluation_end_to_end(tmp_path, results):
    from conftest import smoke_spec
    from shala_bench.launch import run_one

    root = make_mimic(tmp_path / "src")
    cache = tmp_path / "cache"
    mimic_cxr.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    rec = run_one(smoke_spec("mvae", results, dataset="mimic-cxr", cache_dir=str(cache),
                          overrides={"max_train_samples": 24}))
    assert rec.ok, rec.status
    m = rec.metrics
    for k in ("coherence_cond_k1", "coherence_cond_k2", "coherence_joint", "classifier_acc_text"):
        assert k in m
    assert 0.0 <= m["coherence_cond_k1"] <= 1.0 and 0.0 <= m["coherence_joint"] <= 1.0


def test_csv_missing_a_column_is_one_line_error_naming_file_and_column_and_leaves_no_cache(tmp_path):
    root = make_mimic(tmp_path / "src", drop_column="ViewPosition")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        mimic_cxr.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    msg = str(e.value)
    assert "mimic-cxr-2.0.0-metadata.csv" in msg and "missing column(s) ViewPosition" in msg and "\n" not in msg
    assert not [p for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")]
    assert not (cache / "prepared" / "mimic-cxr.json").exists()


def test_finding_value_outside_chexpert_coding_is_named(tmp_path):
    root = make_mimic(tmp_path / "src")
    path = root / "mimic-cxr-2.0.0-chexpert.csv"
    path.write_text(path.read_text().replace(",1.0,", ",yes,", 1))
    with pytest.raises(DataError, match=r"mimic-cxr-2.0.0-chexpert.csv: study \d+ has a finding that is not 1, 0, -1"):
        mimic_cxr.DATASET.prepare(root, smoke_protocol(), tmp_path / "cache", progress=False)


def test_unreadable_jpeg_is_named(tmp_path):
    root = make_mimic(tmp_path / "src")
    bad = next((root / "files").rglob("d001.jpg"))  # the PA image of study 0 (its AP is never read)
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=f"{bad}: unreadable image"):
        mimic_cxr.DATASET.prepare(root, smoke_protocol(), tmp_path / "cache", progress=False)


def test_preparing_twice_reuses_the_cache_and_a_changed_report_rebuilds_it(tmp_path):
    root = make_mimic(tmp_path / "src")
    cache = tmp_path / "cache"
    first = mimic_cxr.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    again = mimic_cxr.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert first["built"] and not again["built"] and first["cache"] == again["cache"]
    report = next((root / "files").rglob("s50000001.txt"))
    report.write_text("FINDINGS: the lungs are clear and the heart is normal.\nIMPRESSION: normal.")
    changed = mimic_cxr.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert changed["built"] and changed["cache"] != first["cache"]
    record = json.loads((cache / "prepared" / "mimic-cxr.json").read_text())
    assert record["fingerprint"] == changed["source"]["fingerprint"]
