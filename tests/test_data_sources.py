"""Where each dataset comes from: `data sources`, `data prepare NAME --help`, and what `data prepare` verifies."""

from __future__ import annotations

import hashlib

import pytest

from shala_bench.cli import main
from shala_bench.registry import get_registry


def test_every_dataset_says_where_to_get_it_with_files_layout_licence_size_and_checksums(capsys):
    reg = get_registry()
    for name in reg.datasets:
        src = reg.get_dataset(name).source
        assert src is not None, name
        for field in ("title", "obtain", "files", "layout", "licence", "size", "checksums"):
            assert getattr(src, field), (name, field)
    assert main(["data", "sources"]) == 0
    out = capsys.readouterr().out
    for name in reg.datasets:
        assert f"\n{name}: " in "\n" + out
    mimic = out.split("mimic-cxr: ", 1)[1].split("\n\n", 1)[0]
    assert "PhysioNet" in mimic and "CREDENTIALED" in mimic and "SHA256SUMS.txt" in mimic


def _help(name: str, capsys) -> str:
    """`shala-bench data prepare NAME --help` through the CLI's parser, in-process."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["data", "prepare", name, "--help"])
    out = capsys.readouterr()
    assert exit_.value.code in (0, None), out.err
    return out.out


def test_prepare_help_is_specific_to_each_dataset(capsys):
    ntu, ucf = _help("ntu120", capsys), _help("ucf101", capsys)
    assert "usage: shala-bench data prepare" in ntu and "nturgbd_skeletons_s018_to_s032.zip" in ntu
    assert "UCF101TrainTestSplits-RecognitionTask.zip" in ucf and "nturgbd" not in ucf


@pytest.fixture
def fake_mimic(tmp_path):
    root = tmp_path / "mimic"
    (root / "files").mkdir(parents=True)
    meta = root / "mimic-cxr-2.0.0-metadata.csv"
    meta.write_text("dicom_id,subject_id,study_id,ViewPosition\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\n")
    return root, meta


def test_prepare_refuses_a_file_that_does_not_match_the_published_checksum(fake_mimic, capsys):
    root, meta = fake_mimic
    (root / "SHA256SUMS.txt").write_text(f"{'0' * 64}  mimic-cxr-2.0.0-metadata.csv\n")
    assert main(["data", "prepare", "mimic-cxr", "--root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not match its sha256 in SHA256SUMS.txt" in err and len(err.strip().splitlines()) == 1


def test_verify_checks_layout_and_listed_checksums(fake_mimic):
    from shala_bench.data.sources import verify
    from shala_bench.errors import DataError

    root, meta = fake_mimic
    src = get_registry().get_dataset("mimic-cxr").source
    (root / "SHA256SUMS.txt").write_text(f"{hashlib.sha256(meta.read_bytes()).hexdigest()}  {meta.name}\n"
                                         f"{'1' * 64}  files/p10/p1/s1/x.jpg\n")  # images are not hashed
    assert verify("mimic-cxr", src, root) == ["layout: 3 required part(s) present",
                                              "checksums: 1 file(s) match SHA256SUMS.txt"]
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(DataError, match="nothing under .* matches mimic-cxr-2.0.0-split.csv"):
        verify("mimic-cxr", src, root)
