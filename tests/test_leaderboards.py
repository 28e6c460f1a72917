"""compare tables, modality-scaling curves and the generated leaderboard pages, on hand-built records."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shala_bench import leaderboards as lb
from shala_bench.cli import main
from shala_bench.results import RunRecord, load_records, run_id, write_record

# A fixed protocol dict (not Protocol(), whose fields grow): hashes below stay stable.
BASE = dict(dataset="toy", profile="quick", protocol_version=1, steps=600, batch_size=128, lr=0.001,
            prior_steps=1500, prior_lr=0.001, latent_dim=32, beta=1.0, n_train=10000, fid_n=500)


def _hash(protocol: dict) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rec(model: str, seed: int, metrics: dict, M: int = 2, status: str = "ok", **proto) -> RunRecord:
    p = dict(BASE, n_modalities=M, **proto)
    h = _hash(p)
    return RunRecord(run_id(seed, M, h), model, p["dataset"], seed, M, p["profile"], h, p, status, metrics)


def records(model_values: dict[str, list[float]], metric: str = "coherence_joint", **kw) -> list[RunRecord]:
    return [rec(m, s, {metric: v}, **kw) for m, vals in model_values.items() for s, v in enumerate(vals)]


def _cells(tables, metric):
    (t,) = tables
    return {model: cells[metric] for model, (_, cells) in t.rows.items()}


# ----------------------------------------------------------------- statistics
def test_mean_and_sample_std_over_seeds_are_exact():
    vals = [0.5, 0.625, 0.75, 0.7]
    (t,) = lb.compare_tables(records({"mvae": vals}) + records({"mopoe": [0.1]}))
    seeds, cells = t.rows["mvae"]
    assert seeds == 4
    assert cells["coherence_joint"].mean == pytest.approx(statistics.fmean(vals), abs=1e-15)
    assert cells["coherence_joint"].std == pytest.approx(statistics.stdev(vals), abs=1e-15)  # ddof = 1
    # One seed: the std is undefined and no ± is printed.
    one = t.rows["mopoe"][1]["coherence_joint"]
    assert one.n == 1 and math.isnan(one.std)
    md = lb.table_markdown(t)
    assert "| mopoe   | 1       | 0.100 " in md
    assert f"{statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}" in md


def test_failed_records_and_non_numeric_metrics_are_left_out():
    rs = records({"mvae": [0.2, 0.4]}) + [rec("mvae", 7, {"coherence_joint": 0.9}, status="failed: nan at step 3"),
                                          rec("mvae", 8, {"coherence_joint": "unavailable", "fd_mean": True})]
    df = lb.records_frame(rs)
    assert sorted(df["seed"]) == [0, 1, 8]
    assert df["coherence_joint"].isna().sum() == 1 and "fd_mean" not in df
    (t,) = lb.compare_tables(rs)
    assert t.rows["mvae"][1]["coherence_joint"].mean == pytest.approx(0.3)


def test_direction_of_each_metric_comes_from_its_entry():
    cat = lb.Catalog()
    for m in ("fd_mean", "fid_mean", "fd_cond_k2", "fd_joint_m0", "test_nll"):
        assert cat.direction(m) == "lower", m
    for m in ("coherence_joint", "coherence_joint_kappa", "coherence_cond_bal_k3", "coherence_cond_kmax", "probe_all"):
        assert cat.direction(m) == "higher", m
    assert cat.direction("fd_n") is None and cat.direction("coherence_joint_chance") is None
    cells = _cells(lb.compare_tables(records({"a": [10.0, 11.0], "b": [20.0, 21.0]}, metric="fd_mean")), "fd_mean")
    assert cells["a"].best and not cells["b"].best


def _toy_plugin():
    import importlib

    sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "thirdparty_plugin"))
    try:
        return importlib.import_module("shala_toy_plugin")
    finally:
        sys.path.pop(0)


def test_direction_of_a_third_party_kid_mean_comes_from_its_entry_not_its_name():
    from shala_bench.registry import Registry

    rs = records({"a": [0.010, 0.011, 0.012], "b": [0.050, 0.051, 0.052]}, metric="kid_mean")
    with_plugin = Registry(plugins=[_toy_plugin()])
    (t,) = lb.compare_tables(rs, metrics=["kid_mean"], registry=with_plugin)
    cells = _cells([t], "kid_mean")
    assert cells["a"].best and cells["a"].significant and not cells["b"].best  # lower is better, as declared
    md = lb.compare_markdown([t])
    assert "kid_mean ↓" in md and "`kid_mean` ↓ squared MMD (cubic kernel)" in md
    # without the plugin no installed metric declares it: shown, never ranked, and said so
    (bare,) = lb.compare_tables(rs, metrics=["kid_mean"])
    plain = _cells([bare], "kid_mean")
    assert not plain["a"].best and not plain["b"].best and bare.lower("kid_mean") is None
    assert "`kid_mean` no installed metric declares it: not ranked" in lb.compare_markdown([bare])


def test_bounds_of_different_names_are_ranked_apart():
    rs = [rec(m, s, {"test_nll": v, "test_nll_bound": b}) for m, b, vals in
          [("mvae", "elbo", [100.0, 101.0]), ("shala", "elbo", [90.0, 91.0]), ("mmvae", "iwae_moe", [50.0, 51.0])]
          for s, v in enumerate(vals)]
    cells = _cells(lb.compare_tables(rs), "test_nll")
    # mmvae's bound is lower but a different quantity: the best ELBO is still shala's, and mmvae stands alone.
    assert cells["shala"].best and cells["shala"].significant and not cells["mvae"].best
    assert not cells["mmvae"].best and cells["mmvae"].bound == "iwae_moe"
    assert "**90.500 ± 0.707**† (elbo)" in lb.table_markdown(lb.compare_tables(rs)[0])


# ----------------------------------------------------------------- protocols
def test_mixed_protocol_hashes_are_never_ranked_together():
    same_M = (records({"mvae": [0.5, 0.52], "mopoe": [0.4, 0.42]})
              + records({"shala": [0.9, 0.92], "mvae": [0.1, 0.12]}, lr=0.01))
    tables = lb.compare_tables(same_M)
    assert len(tables) == 2 and tables[0].protocol_hash != tables[1].protocol_hash
    by_hash = {t.protocol_hash: t for t in tables}
    main_t = by_hash[_hash(dict(BASE, n_modalities=2))]
    other = by_hash[_hash(dict(BASE, n_modalities=2, lr=0.01))]
    assert set(main_t.rows) == {"mvae", "mopoe"} and set(other.rows) == {"shala", "mvae"}
    # mvae is the best of its own protocol although shala (another protocol) scored higher.
    assert main_t.rows["mvae"][1]["coherence_joint"].best
    assert other.rows["shala"][1]["coherence_joint"].best
    md = lb.compare_markdown(tables)
    assert md.count("## toy — M = 2") == 2
    assert f"`{main_t.protocol_hash[:12]}`" in md and f"`{other.protocol_hash[:12]}`" in md
    assert "A different protocol or metric versions from the table above: not ranked with it." in md


def test_family_hash_ignores_only_the_number_of_modalities():
    p2, p5 = dict(BASE, n_modalities=2), dict(BASE, n_modalities=5)
    assert lb.family_hash(p2) == lb.family_hash(p5) == _hash(BASE)
    assert lb.family_hash(dict(p2, lr=0.01)) != lb.family_hash(p2)
    rs = records({"mvae": [0.5, 0.6]}, M=2) + records({"mvae": [0.4, 0.5]}, M=5) + records({"mvae": [0.1]}, M=2, lr=0.5)
    fams = lb.families(lb.records_frame(rs), {r.protocol_hash: r.protocol for r in rs})
    assert [sorted(f.hashes) for f in fams] == [[2, 5], [2]]
    assert fams[0].hashes == {2: _hash(p2), 5: _hash(p5)}


def test_the_current_family_comes_first_not_the_largest():
    """An old recipe's big snapshot (protocol v1, more records) goes below today's: the newest protocol version
    first, then the family whose newest record is the latest; equal keys keep the hash order."""
    old = records({"mvae": [0.5, 0.6, 0.7], "mopoe": [0.5, 0.6, 0.7]}, protocol_version=1)
    for r in old:
        r.created = "2026-01-01T00:00:00+00:00"
    older_v2 = records({"mvae": [0.5, 0.6]}, protocol_version=2, lr=0.5)
    newer_v2 = records({"mvae": [0.4]}, protocol_version=2, lr=0.25)
    for r, t in zip(older_v2 + newer_v2, ("2026-02-01", "2026-02-02", "2026-03-01")):
        r.created = t + "T00:00:00+00:00"
    rs = old + older_v2 + newer_v2
    fams = lb.families(lb.records_frame(rs), {r.protocol_hash: r.protocol for r in rs})
    assert [len(f.frame) for f in fams] == [1, 2, 6]
    assert [int(f.frame["protocol_version"].iloc[0]) for f in fams] == [2, 2, 1]


# ----------------------------------------------------------------- significance
def _welch_one_sided_p(a, b) -> float:
    """Welch's t-test written out: t = (ma - mb) / sqrt(va/na + vb/nb), Welch–Satterthwaite df."""
    from scipy.stats import t as student

    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(student.sf(t, df))


def test_significance_mark_appears_only_beyond_seed_noise():
    clear = _cells(lb.compare_tables(records({"a": [0.90, 0.91, 0.92], "b": [0.50, 0.51, 0.52]})), "coherence_joint")
    assert clear["a"].best and clear["a"].significant and not clear["b"].significant
    # Best by mean but within seed noise: bold, no mark.
    noisy = _cells(lb.compare_tables(records({"a": [0.60, 0.70, 0.80], "b": [0.59, 0.69, 0.79]})), "coherence_joint")
    assert noisy["a"].best and not noisy["a"].significant
    # A huge gap with one seed on a side is never marked: no seed noise to compare with.
    single = _cells(lb.compare_tables(records({"a": [0.95], "b": [0.10, 0.12]})), "coherence_joint")
    assert single["a"].best and not single["a"].significant
    # Lower is better: the test is one-sided in the metric's direction.
    fd = _cells(lb.compare_tables(records({"a": [10.0, 10.2, 10.1], "b": [20.0, 20.5, 19.8]}, metric="fd_mean")),
                "fd_mean")
    assert fd["a"].best and fd["a"].significant
    # Against the runner-up, not the worst.
    three = _cells(lb.compare_tables(records({"a": [0.80, 0.82], "b": [0.79, 0.83], "c": [0.1, 0.11]})),
                   "coherence_joint")
    assert three["a"].best and not three["a"].significant
    md = lb.table_markdown(lb.compare_tables(records({"a": [0.90, 0.91, 0.92], "b": [0.50, 0.51, 0.52]}))[0])
    assert "**0.910 ± 0.010**†" in md and md.count("†") == 1


def test_significance_mark_matches_welch_formula_at_the_threshold():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        a = 0.6 + 0.05 * rng.standard_normal(3) + 0.07
        b = 0.6 + 0.05 * rng.standard_normal(3)
        if a.mean() <= b.mean():
            continue
        cells = _cells(lb.compare_tables(records({"a": list(a), "b": list(b)})), "coherence_joint")
        p = _welch_one_sided_p(a, b)
        assert cells["a"].significant == (p < lb.ALPHA), p
        seen.add(cells["a"].significant)
    assert seen == {True, False}  # the draws fall on both sides of p = 0.05


def test_ties_share_bold_and_have_no_mark():
    cells = _cells(lb.compare_tables(records({"a": [0.5, 0.7], "b": [0.7, 0.5], "c": [0.1, 0.2]})), "coherence_joint")
    assert cells["a"].best and cells["b"].best and not cells["c"].best
    assert not cells["a"].significant and not cells["b"].significant


# ----------------------------------------------------------------- chance
def _binom_upper_tail(hits: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(hits, n + 1))


def test_above_chance_is_the_one_sided_binomial_test_at_its_threshold():
    n, chance = 500, 0.1
    # The smallest hit count whose upper tail is below 0.01, from the closed form: 0.1 + ~2.3 sd ≈ 0.131.
    k = next(h for h in range(n + 1) if _binom_upper_tail(h, n, chance) < lb.CHANCE_P)
    assert 60 < k < 70
    assert not lb.not_above_chance(k / n, chance, n)
    assert lb.not_above_chance((k - 1) / n, chance, n)
    assert lb.not_above_chance(0.09, chance, n) and lb.not_above_chance(0.0, chance, n)
    assert not lb.not_above_chance(1.0, chance, n)


def _coh(model, seed, coh, chance=0.1, **proto):
    metrics = {"coherence_cond_mean": coh, "coherence_joint": 1.0 if coh < 0.1 else 0.3, "fd_mean": 5.0}
    if chance is not None:
        metrics["coherence_cond_chance"] = chance
    return rec(model, seed, metrics, **dict(dict(eval_n=500, n_test=2000), **proto))


def test_a_seed_at_chance_marks_its_models_coherence_cells_only():
    rs = [_coh("mvae", 0, 0.09), _coh("mvae", 1, 0.60), _coh("mvae", 2, 0.62)]
    rs += [_coh("mopoe", s, v) for s, v in enumerate([0.5, 0.55, 0.52])]
    (t,) = lb.compare_tables(rs, metrics=["coherence_cond_mean", "coherence_joint", "fd_mean"])
    mvae, mopoe = t.rows["mvae"][1], t.rows["mopoe"][1]
    assert mvae["coherence_cond_mean"].at_chance == 1 and mvae["coherence_joint"].at_chance == 1
    assert mvae["fd_mean"].at_chance == 0 and mopoe["coherence_cond_mean"].at_chance == 0
    md = lb.table_markdown(t)
    assert md.count(lb.CHANCE_MARK) == 2
    assert "| mvae    | 3       | 0.437 ± 0.300§" in md
    # The seeds stay in the mean: the mark says the cell holds a non-result, it does not hide it.
    assert mvae["coherence_cond_mean"].mean == pytest.approx((0.09 + 0.60 + 0.62) / 3)


def test_without_the_test_set_size_or_a_chance_level_nothing_is_marked():
    rs = [_coh("mvae", 0, 0.09, n_test=0), _coh("mvae", 1, 0.05, chance=None)]  # dataset "toy": not registered
    df = lb.records_frame(rs)
    assert not df["at_chance"].any() and df["chance_level"].isna().all()


def test_records_without_a_recorded_chance_take_the_registered_datasets():
    r = _coh("mvae", 0, 0.09, chance=None, dataset="polymnist-synth")
    df = lb.records_frame([r])
    assert df["chance_level"].iloc[0] == pytest.approx(0.1) and bool(df["at_chance"].iloc[0])


def test_page_lists_the_seeds_at_chance_or_says_every_seed_left_it():
    bad = lb.chance_lines(lb.records_frame([_coh("mvae", 0, 0.09, M=3), _coh("mvae", 1, 0.6, M=3)]))
    text = "\n".join(bad)
    assert "1 of 2 records are not above chance" in text and "| mvae    | 3   | 0      | 0.090 " in text
    good = "\n".join(lb.chance_lines(lb.records_frame([_coh("mvae", 1, 0.6)])))
    assert "Every seed of every model is above chance (1 of 1 records)." in good


def test_the_page_says_what_the_records_cost_and_on_what():
    rs = [_coh("mvae", s, 0.6) for s in range(3)]
    for r, (train, ev, threads) in zip(rs, [(3600.0, 360.0, 1), (5400.0, 360.0, 1), (1800.0, 720.0, 2)]):
        r.timings, r.hardware = {"train_s": train, "eval_s": ev}, {"device": "cpu", "torch_threads": threads}
    line = lb.compute_line(lb.records_frame(rs))
    assert line.startswith("Compute, summed over the 3 records: 3.0 h of training and 0.4 h of evaluation "
                           "(2 records on cpu, 1 torch thread, 1 records on cpu, 2 torch threads)")
    assert lb.compute_line(lb.records_frame([_coh("mvae", 0, 0.6)])) == ""  # no timings: no line


# ----------------------------------------------------------------- golden Markdown
GOLDEN_COMPARE = """\
Cells: mean ± sample standard deviation over seeds (ddof = 1; no ± with a single seed). **Bold**: the best mean \
of the column (↑ higher is better, ↓ lower is better, as the metric that writes the column declares it; a column\
 without an arrow is not ranked). †: the best is better than the runner-up beyond seed noise — one-sided Welch's\
 t-test over seeds (`scipy.stats.ttest_ind(equal_var=False)`), p < 0.05, tested only where both have ≥ 2 seeds. \
Rows with different protocol hashes or metric versions are never ranked together; a bound (e.g. test_nll) is \
ranked only against the same bound, named in brackets. §: a coherence cell with at least one seed whose \
conditional coherence is not above chance — one-sided binomial test of its hits among the min(eval_n, n_test) \
test tuples against 1/C (`scipy.stats.binomtest`), p ≥ 0.01, on the balanced accuracy where recorded (a constant\
 answer scores exactly 1/C), else on the plain accuracy; on a joint-coherence cell also a seed whose prior \
samples are collapsed — the agreement p_o of its joint_n samples is not above the chance agreement p_e (the same\
 binomial test, against p_e; that is, kappa not above 0), or one class takes more than 0.5 of one modality's \
samples. Such a seed's coherences are not a result.

Columns: `coherence_joint` ↑ raw agreement p_o: fraction of prior samples whose modalities' labels all agree (a \
collapsed model scores 1); `fd_mean` ↓ unconditional in-domain Fréchet distance, mean over modalities; \
`fid_mean` ↓ unconditional Inception FID, mean over modalities.

## toy — M = 2 — profile `quick`, protocol v1 `d513efd2f1ab`

| model   | seeds   | coherence_joint ↑   | fd_mean ↓         | fid_mean ↓‡      |
|---------|---------|---------------------|-------------------|------------------|
| mopoe   | 2       | 0.310 ± 0.014       | **1.500 ± 0.707** | **140.0 ± 14.1** |
| mvae    | 3       | **0.800 ± 0.010**†  | 3.000 ± 1.000     | 150.0 ± 14.1     |

‡ FID of the `quick` profile: 500 samples per modality, biased upward with so few samples; comparable only \
within this table, not with published (10k-sample) FIDs.

## toy — M = 2 — profile `quick`, protocol v1 `c60c192ce34a`

A different protocol or metric versions from the table above: not ranked with it.

| model   | seeds   | coherence_joint ↑   |
|---------|---------|---------------------|
| shala   | 1       | 0.990               |
"""


def golden_records() -> list[RunRecord]:
    rs = [rec("mvae", s, {"coherence_joint": v, "fd_mean": f, "fid_mean": g})
          for s, v, f, g in [(0, 0.79, 2.0, 140.0), (1, 0.80, 3.0, 160.0), (2, 0.81, 4.0, None)]]
    rs += [rec("mopoe", s, {"coherence_joint": v, "fd_mean": f, "fid_mean": g})
           for s, v, f, g in [(0, 0.30, 1.0, 130.0), (1, 0.32, 2.0, 150.0)]]
    rs += [rec("shala", 0, {"coherence_joint": 0.99}, lr=0.0005)]
    for r in rs:  # a metric a seed did not produce is absent, not None
        r.metrics = {k: v for k, v in r.metrics.items() if v is not None}
    return rs


def test_compare_markdown_for_fixture_equals_expected_text():
    rs = golden_records()
    md = lb.compare_markdown(lb.compare_tables(rs), {r.protocol_hash: r.protocol for r in rs})
    # Worked by hand: mvae coherence 0.79/0.80/0.81 -> 0.800 ± 0.010; mopoe 0.30/0.32 -> 0.310 ± 0.014; Welch
    # t = 0.49 / sqrt(0.01²/3 + 0.01414²/2) ≈ 42 on ≈ 1.7 df: p < 0.05, marked. fd 1.5 vs 3.0: t ≈ 1.96 on
    # ≈ 2.9 df, p ≈ 0.07: bold, not marked. mvae's fid has 2 of 3 seeds (140, 160). shala: another protocol.
    assert md == GOLDEN_COMPARE


# ----------------------------------------------------------------- formats
def test_compare_csv_and_json_carry_the_same_numbers(tmp_path, capsys):
    for r in golden_records():
        write_record(r, tmp_path / r.dataset / r.model / r.run_id)
    assert main(["compare", "--results", str(tmp_path), "--format", "csv"]) == 0
    df = pd.read_csv(StringIO(capsys.readouterr().out))
    row = df[(df.model == "mvae") & (df.metric == "fid_mean")].iloc[0]
    assert row["mean"] == pytest.approx(150.0) and row["std"] == pytest.approx(statistics.stdev([140, 160]), rel=1e-5)
    assert row["n"] == 2 and row["seeds"] == 3 and bool(row["lower_is_better"])
    assert df["protocol_hash"].nunique() == 2
    assert main(["compare", "--results", str(tmp_path), "--format", "json", "--metric", "coherence_joint"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["tables"][0]["rows"]
    mvae = next(r for r in first if r["model"] == "mvae")["metrics"]["coherence_joint"]
    assert mvae["mean"] == pytest.approx(0.8) and mvae["best"] and mvae["significant"]
    shala = data["tables"][1]["rows"][0]["metrics"]["coherence_joint"]
    assert shala["std"] is None and shala["n"] == 1


def test_compare_unknown_metric_is_one_line_error(tmp_path, capsys):
    for r in golden_records():
        write_record(r, tmp_path / r.dataset / r.model / r.run_id)
    code = main(["compare", "--results", str(tmp_path), "--metric", "coherence_jiont"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean coherence_joint" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------- scaling curves
def sweep_records() -> list[RunRecord]:
    """Two models, M in {2, 3, 4}, seeds 0-1; per-k coherence; mvae has no M = 4 run."""
    rs = []
    for model, q in [("mvae", 0.5), ("shala", 0.7)]:
        for M in (2, 3, 4):
            if model == "mvae" and M == 4:
                continue
            for seed in (0, 1):
                ks = {f"coherence_cond_k{k}": q + 0.05 * k + 0.01 * seed for k in range(1, M)}
                rs.append(rec(model, seed, dict(ks, coherence_cond_mean=sum(ks.values()) / len(ks),
                                               coherence_joint=q - 0.1 * M + 0.02 * seed, fd_mean=10.0 * M - q + seed),
                              M=M))
    return rs


def test_scaling_curves_are_means_over_seeds_per_M():
    df = lb.records_frame(sweep_records())
    curves = {c.metric: c for c in lb.scaling_curves(df)}
    # metric-version-1 records: plain k = 1 and k = M - 1 coherence and the raw joint agreement stand in for
    # the balanced and chance-corrected headlines; the mean over k is only in the per-M tables
    assert list(curves) == ["coherence_cond_k1", "coherence_cond_kmax", "coherence_joint", "fd_mean"]
    kmax = curves["coherence_cond_kmax"]
    assert kmax.series()["mvae"][1] == pytest.approx([0.5 + 0.05 * 1 + 0.005, 0.5 + 0.05 * 2 + 0.005])  # k = M - 1
    cj = curves["coherence_joint"]
    assert cj.xs == [2, 3, 4]
    xs, means, stds = cj.series()["mvae"]
    assert xs == [2, 3]
    assert means == pytest.approx([0.5 - 0.2 + 0.01, 0.5 - 0.3 + 0.01])
    assert stds == pytest.approx([statistics.stdev([0.0, 0.02])] * 2)
    assert cj.cells["shala"][3].best and not cj.cells["mvae"][3].best
    M, kc = lb.k_curve(df)
    assert M == 4 and kc.xs == [1, 2, 3] and list(kc.cells) == ["shala"]  # only shala ran M = 4
    assert kc.cells["shala"][2].mean == pytest.approx(0.7 + 0.1 + 0.005)


def test_scaling_markdown_has_one_row_per_model_and_column_per_M():
    cv = {c.metric: c for c in lb.scaling_curves(lb.records_frame(sweep_records()))}["fd_mean"]
    md = [[c.strip() for c in line.split("|")[1:-1]] for line in lb.curve_markdown(cv, "M").splitlines()]
    assert md[0] == ["model", "seeds", "M = 2", "M = 3", "M = 4"]
    # fd = 10 M - q + seed: mean 10 M - q + 0.5, std of {0, 1} = 0.707. mvae (q = 0.5) has no run at M = 4;
    # shala (q = 0.7) has the lower (better) fd.
    assert md[2] == ["mvae", "2", "20.000 ± 0.707", "30.000 ± 0.707", "–"]
    assert md[3] == ["shala", "2", "**19.800 ± 0.707**", "**29.800 ± 0.707**", "39.800 ± 0.707"]


# ----------------------------------------------------------------- the pages
def _write(rs: list[RunRecord], folder: Path) -> Path:
    for r in rs:
        write_record(r, folder / r.dataset / r.model / r.run_id)
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_leaderboard_twice_gives_byte_identical_files(tmp_path, capsys):
    recs = _write(sweep_records() + records({"mvae": [0.3, 0.4], "shala": [0.5, 0.7]}, dataset="toy2"),
                  tmp_path / "lb" / "records")
    out = tmp_path / "lb"
    assert main(["leaderboard", "--results", str(recs), "--out", str(out)]) == 0
    first = _tree(out)
    assert main(["leaderboard", "--results", str(recs), "--out", str(out)]) == 0
    assert _tree(out) == first
    # A fresh process (another hash seed, fresh matplotlib state): the same bytes again.
    subprocess.run([sys.executable, "-m", "shala_bench.cli", "leaderboard", "--results", str(recs), "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert _tree(out) == first
    fam, fam2 = _hash(BASE)[:12], _hash(dict(BASE, dataset="toy2"))[:12]
    assert sorted(k for k in first if not k.startswith("records/")) == [
        "README.md", f"plots/toy/{fam}-coherence_cond-vs-k-M4.png", f"plots/toy/{fam}-coherence_cond_k1-vs-M.png",
        f"plots/toy/{fam}-coherence_cond_kmax-vs-M.png", f"plots/toy/{fam}-coherence_joint-vs-M.png", f"plots/toy/{fam}-fd_mean-vs-M.png",
        f"plots/toy2/{fam2}-coherence_joint-vs-M.png", "toy.md", "toy2.md"]


def test_dataset_page_names_profile_budget_hashes_and_embeds_plots(tmp_path):
    out = tmp_path / "lb"
    recs = _write(sweep_records() + [rec("mvae", 0, {"coherence_joint": 0.1}, M=3, status="failed: nan at step 4")],
                  out / "records")
    written = lb.write_leaderboards(load_records(recs), out, records_dir=recs)
    page = (out / "toy.md").read_text()
    fam = _hash(BASE)[:12]
    assert page.startswith("# Leaderboard: toy\n")
    header = page.split("Cells: mean")[0]  # before the legend: profile, budget, hashes
    assert (f"- Profile `quick`, protocol v1, family `{fam}`: 600 steps, batch size 128, lr 0.001; 2 models, 2 seeds; "
            f"protocol hashes M = 2 `{_hash(dict(BASE, n_modalities=2))[:12]}`, M = 3 ") in header
    assert f"## Profile `quick`, protocol v1, family `{fam}`" in page
    assert "600 Adam steps of batch size 128, lr 0.001" in page
    for M in (2, 3, 4):
        assert f"| {M}   | `{_hash(dict(BASE, n_modalities=M))[:12]}`" in page
        assert f"#### M = {M} — protocol `{_hash(dict(BASE, n_modalities=M))[:12]}`" in page
    images = [line[line.index("](") + 2:-1] for line in page.splitlines() if line.startswith("![")]
    assert len(images) == 5  # four headline metrics vs M, coherence vs k at the largest M
    assert f"plots/toy/{fam}-coherence_cond-vs-k-M4.png" in images
    for rel in images:
        assert (out / rel).stat().st_size > 1000 and (out / rel) in written
    assert "## Failed runs" in page and "failed: nan at step 4" in page
    index = (out / "README.md").read_text()
    assert f"| [toy](toy.md) | `quick`   | v1         | `{fam}` | 2, 3, 4 |" in index
    assert "[`records/`](records/)" in index


def test_stale_plots_are_removed_and_other_datasets_kept(tmp_path):
    out = tmp_path / "lb"
    stale = out / "plots" / "toy" / "000000000000-old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    lb.write_leaderboards(sweep_records(), out)
    assert not stale.exists() and list((out / "plots" / "toy").glob("*.png"))


def test_every_M_section_has_its_per_k_table_not_only_the_largest(tmp_path):
    """The k plot is drawn at the largest M; the numbers of every M with more than one k are in its section."""
    lb.write_leaderboards(sweep_records(), tmp_path)
    page = (tmp_path / "toy.md").read_text()
    sections = {int(s.split(" ", 1)[0]): s for s in page.split("#### M = ")[1:]}
    assert sorted(sections) == [2, 3, 4]
    assert "per number of given modalities k" not in sections[2]  # its only k is the headline's

    def per_k(M):
        table = sections[M].split("per number of given modalities k", 1)[1].split("\n\n")[1]
        return [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()]

    # coherence_cond_k<k> = q + 0.05 k + 0.01 seed over seeds 0, 1: mean q + 0.05 k + 0.005, sd 0.007
    header, _, mvae, shala = per_k(3)
    assert header == ["model", "seeds", "k = 1", "k = 2"]
    assert mvae == ["mvae", "2", "0.555 ± 0.007", "0.605 ± 0.007"]
    assert shala == ["shala", "2", "**0.755 ± 0.007**†", "**0.805 ± 0.007**†"]
    header, _, shala = per_k(4)  # mvae has no run at M = 4
    assert header == ["model", "seeds", "k = 1", "k = 2", "k = 3"] and shala[0] == "shala"


def test_collect_copies_finished_record_files_only(tmp_path, capsys):
    runs = tmp_path / "runs"
    done, running = rec("mvae", 0, {"coherence_joint": 0.5}), rec("mvae", 1, {}, status="running")
    failed = rec("mopoe", 0, {}, status="failed: nan at step 2")
    for r in (done, running, failed):
        d = runs / r.dataset / r.model / r.run_id
        write_record(r, d)
        (d / "checkpoint.pt").write_bytes(b"weights")
    recs = tmp_path / "lb" / "records"
    assert main(["leaderboard", "--collect", str(runs), "--results", str(recs), "--out", str(tmp_path / "lb")]) == 0
    copied = sorted(p.relative_to(recs).as_posix() for p in recs.rglob("*") if p.is_file())
    assert copied == [f"toy/mopoe/{failed.run_id}/record.json", f"toy/mvae/{done.run_id}/record.json"]
    assert (recs / copied[1]).read_bytes() == (runs / copied[1]).read_bytes()
    out = capsys.readouterr().out
    assert "collected 2 record(s)" in out
    assert main(["leaderboard", "--collect", str(runs), "--results", str(recs), "--out", str(tmp_path / "lb")]) == 0
    assert "collected 0 record(s)" in capsys.readouterr().out


# ----------------------------------------------------------------- metric versions and collapse marks
def test_a_metric_version_change_splits_families_and_tables_like_a_protocol_change():
    v1 = records({"mvae": [0.5, 0.52]})
    v2 = [rec("mopoe", s, {"coherence_joint": v, "metric_versions": {"coherence_joint": 2, "fid": 1}})
          for s, v in enumerate([0.9, 0.92])]
    # a record without metric versions is of version 1 throughout: its family hash is the protocol's alone
    assert lb.family_hash(dict(BASE, n_modalities=2), {"fid": 1}) == lb.family_hash(dict(BASE, n_modalities=2))
    df = lb.records_frame(v1 + v2)
    assert df["family_hash"].nunique() == 2 and set(df["metric_versions"]) == {"", "coherence_joint v2"}
    tables = lb.compare_tables(v1 + v2)
    assert len(tables) == 2 and {t.protocol_hash for t in tables} == {v1[0].protocol_hash}  # same protocol
    by_v = {t.metric_versions: t for t in tables}
    assert set(by_v[""].rows) == {"mvae"} and set(by_v["coherence_joint v2"].rows) == {"mopoe"}
    assert "metrics coherence_joint v2" in lb.compare_markdown(tables)
    fams = lb.families(df, {r.protocol_hash: r.protocol for r in v1 + v2})
    assert len(fams) == 2


def _scored(model, seed, s: dict, M=3):
    """A record of a fake model's coherence metrics (tests/test_coherence.py) under a protocol with enough tuples."""
    return rec(model, seed, dict(s, metric_versions={"coherence_conditional": 2, "coherence_joint": 2}), M=M,
               eval_n=1100, n_test=1100, joint_n=1000)


def test_a_constant_model_is_marked_collapsed_and_a_perfect_one_is_not():
    from test_coherence import CONSTANT, PERFECT, scores

    const, perfect = scores(CONSTANT), scores(PERFECT)
    rs = [_scored("constant", s, const) for s in (0, 1)] + [_scored("perfect", s, perfect) for s in (0, 1)]
    df = lb.records_frame(rs)
    assert df.set_index("model")["collapsed"].groupby(level=0).all().to_dict() == {"constant": True, "perfect": False}
    assert df.set_index("model")["at_chance"].groupby(level=0).all().to_dict() == {"constant": True, "perfect": False}
    (t,) = lb.compare_tables(rs, metrics=["coherence_joint_kappa", "coherence_joint", "coherence_cond_bal_mean"])
    c, p = t.rows["constant"][1], t.rows["perfect"][1]
    assert c["coherence_joint"].at_chance == 2 and c["coherence_joint_kappa"].at_chance == 2
    assert not p["coherence_joint"].at_chance and not p["coherence_joint_kappa"].at_chance
    md = lb.table_markdown(t)
    # kappa 0 and raw agreement 1: a § cell is never the best, so the perfect model's 1.000 alone is bold
    assert "| constant | 2       | 0.000 ± 0.000§            | 1.000 ± 0.000§      | 0.100 ± 0.000§" in md
    text = "\n".join(lb.chance_lines(df))
    assert "2 of 4 records are not above chance or collapsed" in text and "conditional at chance, collapsed" in text


def _joint(p_o, p_e, majority, joint_n=1000):
    return rec("m", 0, {"coherence_joint": p_o, "coherence_joint_chance": p_e, "coherence_joint_majority": majority,
                        "coherence_cond_bal_mean": 0.9, "coherence_cond_chance": 0.1},
               eval_n=500, n_test=500, joint_n=joint_n)


def test_collapse_is_kappa_not_above_chance_by_the_binomial_test_or_a_majority_above_half():
    from scipy.stats import binomtest

    n, p_e = 1000, 0.2
    k = next(h for h in range(n + 1) if binomtest(h, n, p_e, alternative="greater").pvalue < lb.CHANCE_P)
    assert not lb.collapsed(_joint(k / n, p_e, 0.3)) and lb.collapsed(_joint((k - 1) / n, p_e, 0.3))
    # high kappa, but one class takes 60 % of a modality's samples: collapsed all the same
    assert lb.collapsed(_joint(0.95, 0.3, 0.6)) and not lb.collapsed(_joint(0.95, 0.3, 0.5))
    # a metric-version-1 record has neither p_e nor the majority share: never called collapsed
    assert not lb.collapsed(rec("m", 0, {"coherence_joint": 1.0}, joint_n=1000))


def test_version_one_records_keep_the_conditional_mark_on_their_joint_cell():
    # MVAE seed 1 at M = 2 on the committed page: conditional 0.088, joint 1.000 (a collapsed sampler)
    rs = [_coh("mvae", 0, 0.6), _coh("mvae", 1, 0.088)]
    (t,) = lb.compare_tables(rs, metrics=["coherence_joint"])
    assert t.rows["mvae"][1]["coherence_joint"].at_chance == 1


def test_the_committed_version_one_records_still_load_and_render(tmp_path):
    # the 72 protocol-v1 records of the committed page (issue 18's grid adds records of its own family beside them)
    recs = Path(__file__).resolve().parents[1] / "leaderboards" / "records"
    records_ = [r for r in load_records(recs) if r.protocol.get("protocol_version", 1) == 1]
    df = lb.records_frame(records_)
    assert len(df) == 72 and set(df["metric_versions"]) == {""} and df["family_hash"].nunique() == 1
    assert "coherence_cond_kmax" in df and df["coherence_cond_kmax"].notna().all()
    lb.write_leaderboards(records_, tmp_path, records_dir=recs)
    page = (tmp_path / "polymnist-synth.md").read_text()
    assert "#### coherence_cond_k1 ↑ vs M" in page and "#### coherence_cond_kmax ↑ vs M" in page
    assert "fd_cond_mean ↓" in page and "Metric versions: every metric v1." in page
