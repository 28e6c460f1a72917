"""benchmarks/select_shala_variant.py: the documented choice of `shala`, from validation records only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import smoke_spec

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("select_shala_variant", ROOT / "benchmarks" / "select_shala_variant.py")
sel = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sel  # dataclasses look their module up there
_spec.loader.exec_module(sel)


def write(folder: Path, model: str, settings: dict, by_m: dict, split: str = "val", seeds=(0, 1),
          trained: dict | None = None, recipe: dict | None = None) -> None:
    """Validation records: by_m = {M: (k1, kappa, fd)}; two seeds around each value (mean = the value)."""
    for M, (k1, kappa, fd) in by_m.items():
        for j, seed in enumerate(seeds):
            d = 0.01 * (1 if j else -1)
            rec = {"kind": sel.KIND, "split": split, "model": model, "n_modalities": M, "seed": seed,
                   "settings": settings, "trained": trained or {}, "recipe": recipe or {"max_train_samples": 100},
                   "metrics": {sel.SCORE: k1 + d, sel.KAPPA: kappa - d, sel.FD: fd + d,
                                                      "coherence_cond_k4": 0.99}}
            tag = json.dumps({**(recipe or {}), **(trained or {}), **settings}, sort_keys=True).replace('"', "")
            path = folder / model / tag / f"M{M}-s{seed}" / sel.VALIDATION
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec))


ALL = (2, 5, 8)


def fixture(folder: Path) -> None:
    write(folder, "shala-fused", {"guidance_scale": 1.0}, {M: (0.20, 0.50, 10.0) for M in ALL})
    write(folder, "shala-fused", {"guidance_scale": 3.0}, {M: (0.30, 0.50, 10.0) for M in ALL})  # incumbent's best
    write(folder, "shala-cond", {"guidance_scale": 1.0}, {2: (0.50, 0.47, 11.0), 5: (0.60, 0.48, 11.0), 8: (0.70, 0.46, 12.0)})
    write(folder, "shala-cond", {"guidance_scale": 3.0}, {M: (0.75, 0.30, 11.0) for M in ALL})  # κ guard rail
    write(folder, "shala-post", {"post_weight": 1.0}, {M: (0.90, 0.50, 10.0) for M in (2, 5)})  # no M = 8
    write(folder, "shala-post", {"post_weight": 0.2}, {M: (0.65, 0.50, 20.0) for M in ALL})  # FD guard rail
    write(folder, "mopoe", {}, {M: (0.99, 0.99, 1.0) for M in ALL})  # not a variant: ignored
    # test-split numbers of a far better variant must not exist here; see the next test


def test_selection_picks_the_known_best_on_a_fixture(tmp_path):
    fixture(tmp_path)
    d = sel.select(sel.read_validation_records(tmp_path))
    assert (d["variant"], d["settings"]) == ("shala-cond", {"guidance_scale": 1.0})
    assert d["score"] == pytest.approx(0.60) and d["incumbent"]["score"] == pytest.approx(0.30)
    reasons = {(c["model"], json.dumps(c["settings"], sort_keys=True)): c["reason"] for c in d["candidates"]}
    assert "joint κ" in reasons[("shala-cond", '{"guidance_scale": 3.0}')]
    assert "FD" in reasons[("shala-post", '{"post_weight": 0.2}')]
    assert "M = 8" in reasons[("shala-post", '{"post_weight": 1.0}')]
    assert "**chosen**" in sel.table(d)
    # looser guard rails admit the higher-scoring settings: the rule, not the fixture, decides
    loose = sel.select(sel.read_validation_records(tmp_path), max_kappa_drop=1.0, max_fd_ratio=10.0)
    assert (loose["variant"], loose["settings"]) == ("shala-cond", {"guidance_scale": 3.0})
    # an average over only the Ms asked for
    two = sel.select(sel.read_validation_records(tmp_path), ms=(2, 5))
    assert (two["variant"], two["settings"]) == ("shala-post", {"post_weight": 1.0})


def test_selection_keeps_the_incumbent_on_a_tie_and_refuses_test_records(tmp_path):
    write(tmp_path / "a", "shala-fused", {}, {M: (0.40, 0.5, 10.0) for M in ALL})
    write(tmp_path / "a", "shala-cond", {}, {M: (0.41, 0.5, 10.0) for M in ALL})
    assert sel.select(sel.read_validation_records(tmp_path / "a"))["variant"] == "shala-cond"
    assert sel.select(sel.read_validation_records(tmp_path / "a"), min_gain=0.02)["variant"] == "shala-fused"
    write(tmp_path / "a", "shala-post", {}, {M: (0.95, 0.5, 10.0) for M in ALL}, split="test")
    with pytest.raises(sel.SelectionError, match="not a validation record"):
        sel.read_validation_records(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sel.SelectionError, match="no validation.json"):
        sel.read_validation_records(tmp_path / "empty")


def test_runs_with_other_trained_settings_are_other_candidates(tmp_path):
    fixture(tmp_path)
    write(tmp_path, "shala-cond", {"guidance_scale": 1.0}, {M: (0.70, 0.50, 10.0) for M in ALL},
          trained={"modality_dropout": 0.5})
    d = sel.select(sel.read_validation_records(tmp_path))
    assert (d["variant"], d["trained"], d["settings"]) == ("shala-cond", {"modality_dropout": 0.5},
                                                            {"guidance_scale": 1.0})
    assert d["score"] == pytest.approx(0.70)  # not merged with the default-trained runs' 0.60
    assert "modality_dropout" in sel.table(d)


def test_cli_select_writes_the_decision(tmp_path, capsys):
    fixture(tmp_path / "val")
    assert sel.main(["select", "--records", str(tmp_path / "val"), "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["variant"] == "shala-cond"
    assert "shala = shala-cond" in capsys.readouterr().out
    assert sel.main(["evaluate", "--runs", str(tmp_path), "--out", str(tmp_path / "o"), "--grid", "beta=1,2"]) == 2


def test_evaluate_step_writes_validation_records_per_grid_point(results, tmp_path):
    from shala_bench.launch import run_one

    rec = run_one(smoke_spec("shala-cond", results))
    other = run_one(smoke_spec("shala-cond", results, overrides={"shala-cond.modality_dropout": "0.5"}))
    assert rec.ok and other.ok and other.config["modality_dropout"] == 0.5
    out = tmp_path / "val"
    assert sel.main(["evaluate", "--runs", str(results), "--out", str(out), "--grid", "guidance_scale=1,2",
                     "--grid", "post_weight=0.5"]) == 0  # a key shala-cond does not read is not applied
    recs = sel.read_validation_records(out)
    assert sorted(r["settings"]["guidance_scale"] for r in recs) == [1.0, 1.0, 2.0, 2.0]
    # a second call keeps the records it finds (resume) and evaluates nothing again
    before = {p: p.stat().st_mtime_ns for p in out.rglob(sel.VALIDATION)}
    assert sel.main(["evaluate", "--runs", str(results), "--out", str(out), "--grid", "guidance_scale=1,2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob(sel.VALIDATION)} == before
    assert all(set(r["settings"]) == {"guidance_scale"} for r in recs)
    # the trained settings are the recorded config's differences from the resolved defaults
    assert sorted(json.dumps(r["trained"]) for r in recs) == ['{"modality_dropout": 0.5}'] * 2 + ["{}"] * 2
    n_val = rec.protocol["n_val"]
    for r in recs:  # the validation split stood in for the test split
        assert r["split"] == "val" and r["metrics"]["fd_n"] == n_val < rec.metrics["fd_n"]
        assert sel.SCORE in r["metrics"] and sel.KAPPA in r["metrics"]
        # the model was built from the run's config with the grid point applied
        trained = other if r["trained"] else rec
        assert r["config"] == {**trained.config, "guidance_scale": r["settings"]["guidance_scale"]}


def test_grid_keys_are_the_variants_evaluation_settings():
    from shala_bench.registry import get_registry

    reg = get_registry()
    for model, reads in sel.READS.items():  # a variant reads only its config's evaluation settings
        assert reads <= set(reg.get_model(model).config.evaluation_fields()), model
    assert sel.parse_grid(["post_weight=0.05,1", "post_langevin=0,2", "guidance_scale=3"]) == {
        "post_weight": [0.05, 1.0], "post_langevin": [0, 2], "guidance_scale": [3.0]}
    for bad in ("beta=1", "modality_dropout=0.5", "eval_n=10", "shala_post_weight=1", "post_langevin=0.5"):
        with pytest.raises(sel.SelectionError, match="--grid"):
            sel.parse_grid([bad])


def test_runs_trained_under_another_recipe_are_other_candidates(tmp_path):
    """`trained` is relative to the profile when a record was written; a record written before the profile's cap
    was raised says {} like one after it. Its whole recipe keeps the two apart."""
    fixture(tmp_path)
    write(tmp_path, "shala-cond", {"guidance_scale": 1.0}, {M: (0.90, 0.50, 10.0) for M in (5,)},
          recipe={"max_train_samples": 50})  # an older, shorter recipe at M = 5 only
    d = sel.select(sel.read_validation_records(tmp_path), ALL, 0.05, 1.25, 0.0)
    old = [c for c in d["candidates"] if c["model"] == "shala-cond" and c["score"] is None]
    assert old and all(c["eligible"] is False for c in old)  # no M = 2 or 8 under its recipe: out, not merged
    assert d["score"] == pytest.approx(0.60)


def test_a_record_without_its_recipe_is_refused(tmp_path):
    fixture(tmp_path)
    path = next(tmp_path.rglob(sel.VALIDATION))
    rec = json.loads(path.read_text())
    del rec["recipe"]
    path.write_text(json.dumps(rec))
    with pytest.raises(sel.SelectionError, match="does not name its training recipe"):
        sel.select(sel.read_validation_records(tmp_path), ALL, 0.05, 1.25, 0.0)
