"""Who writes what: `compare` prints (pages only with --out, never over published ones), only `leaderboard`
writes leaderboards/; unreadable or inconsistent records are skipped with one warning, never fatal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shala_bench.cli import main
from shala_bench.results import RunRecord, load_records, run_id, write_record

BASE = dict(dataset="toy", profile="quick", protocol_version=1, steps=600, batch_size=128, lr=0.001)


def _hash(p: dict) -> str:
    return hashlib.sha256(json.dumps(p, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rec(model: str, seed: int, value: float | None = 0.5, status: str = "ok", **proto) -> RunRecord:
    p = dict(BASE, n_modalities=2, **proto)
    h = _hash(p)
    return RunRecord(run_id(seed, 2, h), model, "toy", seed, 2, "quick", h, p, status,
                     {"coherence_joint": value} if value is not None else {})


def _write(rs, folder: Path) -> Path:
    for r in rs:
        write_record(r, folder / r.dataset / r.model / r.run_id)
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _published(root: Path) -> Path:
    """A leaderboards/ folder as committed: records/ and the pages built from them."""
    lb = root / "leaderboards"
    _write([rec("mvae", 0, 0.9), rec("mvae", 1, 0.8)], lb / "records")
    assert main(["leaderboard", "--results", str(lb / "records"), "--out", str(lb)]) == 0
    return lb


def test_compare_prints_and_leaves_leaderboards_untouched(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lb = _published(tmp_path)
    before = _tree(lb)
    _write([rec("mopoe", 0, 0.1), rec("mopoe", 1, 0.2)], tmp_path / "runs")
    capsys.readouterr()
    assert main(["compare"]) == 0
    out = capsys.readouterr().out
    assert "mopoe" in out and "wrote" not in out
    assert _tree(lb) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboards", "runs"]


def test_compare_out_writes_pages_but_never_over_published_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lb = _published(tmp_path)
    before = _tree(lb)
    _write([rec("mopoe", 0, 0.1)], tmp_path / "runs")
    capsys.readouterr()
    assert main(["compare", "--out", "leaderboards"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "leaderboard --collect runs" in err
    assert _tree(lb) == before
    assert main(["compare", "--out", "mine"]) == 0
    assert (tmp_path / "mine" / "toy.md").is_file() and "wrote" in capsys.readouterr().out


def test_leaderboard_refuses_outside_records_unless_collected(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lb = _published(tmp_path)
    before = _tree(lb)
    _write([rec("mopoe", 0, 0.1)], tmp_path / "runs")
    capsys.readouterr()
    assert main(["leaderboard", "--results", "runs"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--collect" in err
    assert _tree(lb) == before
    assert main(["leaderboard", "--collect", "runs"]) == 0
    assert "mopoe" in (lb / "toy.md").read_text()


def test_corrupt_and_inconsistent_records_are_skipped_with_one_warning_each(tmp_path, capsys):
    runs = _write([rec("mvae", 0, 0.9), rec("mvae", 1, 0.8)], tmp_path / "runs")
    bad = runs / "toy" / "mvae" / "broken" / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"run_id": "broken", "mod')  # truncated
    # edited to another protocol_version, hash left unchanged: must not be merged into the v1 table
    edited = rec("mvae", 2, 0.1)
    path = _write([edited], runs) / "toy" / "mvae" / edited.run_id / "record.json"
    d = json.loads(path.read_text())
    d["protocol"]["protocol_version"] = 2
    d["run_id"] = "edited"
    path.write_text(json.dumps(d))
    capsys.readouterr()
    assert len(load_records(runs)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("shala-bench: warning: skipped ") for line in err)
    assert str(bad) in err[0] and str(path) in err[1] and "not the hash of its protocol" in err[1]
    assert main(["compare", "--results", str(runs), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "0.1" not in out.split("coherence_joint", 1)[1] and len(err.strip().splitlines()) == 2
    lb = tmp_path / "lb"
    assert main(["leaderboard", "--results", str(runs), "--out", str(lb)]) == 0
    assert "toy.md" in capsys.readouterr().out


def test_compare_lists_failed_runs_in_their_own_table(tmp_path, capsys):
    runs = _write([rec("mvae", 0, 0.9), rec("mvae", 1, 0.8), rec("mopoe", 0, None, status="failed: nan at step 4"),
                   rec("mopoe", 1, None, status="running")], tmp_path / "runs")
    capsys.readouterr()
    assert main(["compare", "--results", str(runs)]) == 0
    out = capsys.readouterr().out
    tail = out.split("Failed runs (1; not in the tables):", 1)[1]
    assert "mopoe" in tail and "failed: nan at step 4" in tail and "running" not in tail
