"""Protocol-v2 pages on hand-built records and curves.csv files: the unconverged mark, the budget policy, the
compute columns, rows split by config hash, the validation learning curves and the ranking at equal compute."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from shala_bench import leaderboards as lb
from shala_bench.cli import main
from shala_bench.results import CURVES, RunRecord, load_records, run_id
from test_leaderboards import _hash, _tree, _write, rec

# A fixed protocol-v2 recipe: a budget policy instead of a step count; β and the stage budgets are the models'.
V2 = dict(dataset="toy", profile="quick", protocol_version=2, batch_size=128, lr=0.001, latent_dim=32, n_train=10000,
          fid_n=500, max_train_samples=4000, eval_every=500, patience=3, min_delta=0.001, val_n=1000)
METRICS = ["coherence_joint", "fd_mean"]


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def v2rec(model: str, seed: int, metrics: dict, *, converged: bool | None = True, config: dict | None = None,
          samples: int = 3000, flops: float = 2e15, M: int = 2, **proto) -> RunRecord:
    p = dict(V2, n_modalities=M, **proto)
    h = _hash(p)
    config = {"beta": 1.0} if config is None else config
    ch = _config_hash(config)
    stop = "plateau" if converged else "budget"
    return RunRecord(f"{run_id(seed, M, h)}-{ch[:8]}", model, p["dataset"], seed, M, p["profile"], h, p, "ok",
                     metrics, converged=converged, train_samples=samples, best_step={"vae": samples // 128},
                     train_flops=flops, config=config, config_hash=ch,
                     stages={"vae": {"converged": converged, "best_step": samples // 128, "samples": samples,
                                     "evaluations": samples // 500, "stop_reason": stop,
                                     "selection": "val_coherence_cond_k1"}})


def _m(cj: float, fd: float) -> dict:
    return {"coherence_joint": cj, "fd_mean": fd}


def _row(md: str, name: str) -> list[str]:
    (line,) = [line for line in md.splitlines() if line.startswith(f"| {name} ")]
    return [c.strip() for c in line.split("|")[1:-1]]


# ----------------------------------------------------------------- the unconverged mark
def test_the_unconverged_mark_is_on_exactly_the_cells_of_a_model_with_an_unconverged_seed():
    rs = [v2rec("mopoe", 0, _m(0.5, 3.0)), v2rec("mopoe", 1, _m(0.52, 3.2), converged=False, samples=4000),
          v2rec("mvae", 0, _m(0.4, 4.0)), v2rec("mvae", 1, _m(0.41, 4.1))]
    (t,) = lb.compare_tables(rs, metrics=METRICS)
    assert {m: c.unconverged for m, c in t.rows["mopoe"][1].items()} == {
        "coherence_joint": 1, "fd_mean": 1, "run_train_samples": 1, "run_train_pflop": 1}
    assert not any(c.unconverged for c in t.rows["mvae"][1].values())
    md = lb.table_markdown(t)
    mopoe, mvae = _row(md, "mopoe"), _row(md, "mvae")
    assert [c.endswith(lb.UNCONVERGED_MARK) for c in mopoe[3:]] == [True] * 4  # every cell after model, seeds, config
    assert lb.UNCONVERGED_MARK not in "".join(mvae) and md.count(lb.UNCONVERGED_MARK) == 4
    # a seed that did not converge stays in the mean, and the legend says what the mark means
    assert t.rows["mopoe"][1]["coherence_joint"].mean == pytest.approx(0.51)
    assert lb.CONVERGENCE_LEGEND in lb.compare_markdown([t])


def test_the_mark_is_not_in_the_symbols_of_other_marks_and_absent_convergence_is_not_unconverged():
    assert len({lb.UNCONVERGED_MARK, lb.SIG_MARK, lb.QUICK_FID_MARK, lb.CHANCE_MARK}) == 4
    rs = [v2rec("mopoe", 0, _m(0.5, 3.0), converged=None), v2rec("mopoe", 1, _m(0.5, 3.0), converged=None)]
    (t,) = lb.compare_tables(rs, metrics=METRICS)
    assert lb.UNCONVERGED_MARK not in lb.table_markdown(t) and not t.convergence
    assert lb.CONVERGENCE_LEGEND not in lb.compare_markdown([t])
    assert "not recorded for this family" in "\n".join(lb.convergence_lines(lb.records_frame(rs)))


def test_v1_records_render_as_their_own_family_and_say_convergence_was_not_recorded(tmp_path):
    v1 = [rec("mvae", s, _m(0.3 + 0.01 * s, 5.0)) for s in (0, 1)]  # the old records: no v2 field at all
    v2 = [v2rec("mvae", 0, _m(0.6, 2.0)), v2rec("mvae", 1, _m(0.61, 2.1), converged=False, samples=4000)]
    out = tmp_path / "lb"
    lb.write_leaderboards(v1 + v2, out)
    page = (out / "toy.md").read_text()
    sections = page.split("\n## Profile ")[1:]
    assert len(sections) == 2
    (old,) = [s for s in sections if s.startswith("`quick`, protocol v1,")]
    (new,) = [s for s in sections if s.startswith("`quick`, protocol v2,")]
    assert "Convergence: not recorded for this family" in old
    assert lb.UNCONVERGED_MARK not in old.split("### Leaderboard per M")[1]  # no v1 cell is marked
    assert "600 Adam steps of batch size 128" in old and "Budget policy" not in old
    assert ("Convergence: 1 of 2 records reached a validation plateau within the budget; 1 did not (listed here" in new
            and "| mvae    | 2   | 1      | 4000            | vae                     |" in new)
    assert lb.CONVERGENCE_LEGEND in page
    header = page.split("Cells: mean")[0]
    assert "≤ 4000 training samples (validation plateau stop), batch size 128" in header
    assert "600 steps, batch size 128" in header


# ----------------------------------------------------------------- budget policy and compute columns
def test_the_profile_section_states_the_budget_policy_and_the_selection_metric(tmp_path):
    lb.write_leaderboards([v2rec("mvae", 0, _m(0.6, 2.0))], tmp_path)
    page = (tmp_path / "toy.md").read_text()
    assert ("Budget policy (the same for every model): each stage is evaluated every 500 training samples on 1000 "
            "validation tuples and stops at a plateau — when the validation selection metric "
            "`vae: val_coherence_cond_k1` has not improved by more than min_delta = 0.001 for patience = 3 "
            "evaluations — or at the budget of 4000 training samples (max_train_samples)") in page
    assert "Training (the same for every model): Adam, batch size 128, lr 0.001; latent size 32; 10000" in page
    # the recipe's own name for the selection metric wins over the stages'
    assert "metric `coherence_cond_bal_k1` has" in lb.policy_line(dict(V2, selection="coherence_cond_bal_k1"),
                                                                   lb.records_frame([]))
    assert lb.policy_line(dict(V2, max_train_samples=None) | {"steps": 600}, lb.records_frame([])) != ""
    assert lb.policy_line({"steps": 600}, lb.records_frame([])) == ""


def test_the_per_M_table_gains_samples_to_convergence_and_train_pflop():
    rs = [v2rec("mvae", 0, _m(0.4, 4.0), samples=2000, flops=1.5e15),
          v2rec("mvae", 1, _m(0.41, 4.1), samples=3000, flops=2.5e15),
          v2rec("mopoe", 0, _m(0.5, 3.0), samples=3500, flops=0.012e15)]
    (t,) = lb.compare_tables(rs, metrics=METRICS)
    assert t.compute == ["run_train_samples", "run_train_pflop"]
    md = lb.table_markdown(t)
    head = [c.strip() for c in md.splitlines()[0].split("|")[1:-1]]
    assert head == ["model", "seeds", "config", "coherence_joint ↑", "fd_mean ↓", "samples to convergence",
                    "train PFLOP"]
    assert _row(md, "mvae")[-2:] == [f"2500 ± {statistics.stdev([2000, 3000]):.0f}",
                                     f"2.00 ± {statistics.stdev([1.5, 2.5]):.2f}"]
    assert _row(md, "mopoe")[-2:] == ["3500", "0.0120"]
    # compute is shown, never ranked: no bold although the means differ
    assert "**" not in "".join(_row(md, "mvae")[-2:] + _row(md, "mopoe")[-2:])
    # v1 records have neither: no such columns
    (old,) = lb.compare_tables([rec("mvae", 0, _m(0.4, 4.0))], metrics=METRICS)
    assert old.compute == [] and "samples to convergence" not in lb.table_markdown(old)


def test_the_per_M_table_shows_each_cells_measured_hours_and_the_page_the_busy_wall_time():
    # two workers: runs of 1 h and 2 h that overlap by 0.5 h, then a third hour after a pause of a day
    ends = {("mvae", 0): ("2026-12-01T01:00:00+00:00", 3600), ("mopoe", 0): ("2026-12-01T02:30:00+00:00", 7200),
            ("mvae", 1): ("2026-12-02T10:00:00+00:00", 3600)}
    rs = []
    for (model, seed), (end, wall) in ends.items():
        r = v2rec(model, seed, _m(0.4, 4.0))
        r.created, r.timings = end, {"data_s": 60.0, "train_s": wall - 660.0, "eval_s": 600.0}
        rs.append(r)
    fr = lb.records_frame(rs)
    assert lb.busy_wall_s(fr) == pytest.approx(3600 + 7200 - 1800 + 3600)
    assert "wall time 3.5 h — the union of the runs' intervals" in lb.compute_line(fr)
    (t,) = lb.compare_tables(rs, metrics=METRICS)
    assert t.compute == ["run_train_samples", "run_train_pflop", "run_train_h", "run_eval_h"]
    md = lb.table_markdown(t)
    assert _row(md, "mopoe")[-2:] == [f"{(7200 - 660) / 3600:.2f}", "0.17"]
    assert lb.busy_wall_s(lb.records_frame([v2rec("mvae", 0, _m(0.4, 4.0))])) == 0.0  # no timings: not said


def test_a_stage_reused_from_another_run_is_in_the_cells_hours_and_counted_once_in_the_grids():
    # shala-post trained stage 1 (1 h) and its prior; shala-cond took that stage 1 and trained its prior (0.5 h)
    post, cond = v2rec("shala-post", 0, _m(0.4, 4.0)), v2rec("shala-cond", 0, _m(0.4, 4.0))
    post.created, post.timings = "2026-12-01T01:30:00+00:00", {"train_s": 5400.0, "eval_s": 0.0}
    cond.created, cond.timings = "2026-12-01T02:00:00+00:00", {"train_s": 5400.0, "eval_s": 0.0, "reused_s": 3600.0}
    fr = lb.records_frame([post, cond])
    line = lb.compute_line(fr)
    assert line.startswith("Compute, summed over the 2 records: 2.0 h of training (stages reused from another "
                           "run, 1.0 h, counted once")
    assert lb.busy_wall_s(fr) == pytest.approx(5400 + 1800)  # cond ran 01:30-02:00, after post
    (t,) = lb.compare_tables([post, cond], metrics=METRICS)
    assert _row(lb.table_markdown(t), "shala-cond")[-1] == "1.50"  # the cell's cost alone: stage 1 included


def test_the_grid_table_shows_every_hole_and_each_cells_measured_hours():
    # mopoe has two seeds at M = 2 and nothing at M = 5; mvae one seed at each; one record without timings
    rs = []
    for model, seed, M, train_s in [("mopoe", 0, 2, 3600.0), ("mopoe", 1, 2, 5400.0), ("mvae", 0, 2, 1800.0),
                                    ("mvae", 0, 5, None)]:
        r = v2rec(model, seed, _m(0.4, 4.0), M=M)
        if train_s is not None:
            r.timings = {"train_s": train_s, "eval_s": 0.0}
        rs.append(r)
    lines = lb.grid_lines(lb.records_frame(rs))
    assert lines[0].startswith("Grid: 3 of 4 (model, M) cells have records")
    table = lines[2]
    assert _row(table, "mopoe")[1:] == ["0, 1 · 1.25 h", "–"]
    assert _row(table, "mvae")[1:] == ["0 · 0.50 h", "0"]  # no timings recorded: the seeds alone
    assert "| model   | M = 2" in table.splitlines()[0]


# ----------------------------------------------------------------- config identity
def test_rows_of_one_model_under_different_configs_are_separate_and_ranked_together(tmp_path):
    a, b = {"beta": 1.0, "K": 1}, {"beta": 2.5, "K": 1}
    ha, hb = _config_hash(a)[:6], _config_hash(b)[:6]
    rs = ([v2rec("mopoe", s, _m(0.50 + 0.01 * s, 3.0), config=a) for s in (0, 1)]
          + [v2rec("mopoe", s, _m(0.70 + 0.01 * s, 3.5), config=b) for s in (0, 1, 2)]
          + [v2rec("mvae", s, _m(0.40, 4.0), config={"beta": 1.0}) for s in (0, 1)])
    (t,) = lb.compare_tables(rs, metrics=METRICS)  # one recipe: one table
    assert list(t.rows) == sorted([f"mopoe·{ha}", f"mopoe·{hb}", "mvae"])
    assert t.rows[f"mopoe·{ha}"][0] == 2 and t.rows[f"mopoe·{hb}"][0] == 3  # never merged
    assert t.rows[f"mopoe·{ha}"][1]["coherence_joint"].mean == pytest.approx(0.505)
    assert t.rows[f"mopoe·{hb}"][1]["coherence_joint"].best  # ranked with the other rows of the recipe
    md = lb.table_markdown(t)
    assert _row(md, "mvae")[2] == f"`{_config_hash({'beta': 1.0})[:6]}`"  # one config: its hash in a column
    lb.write_leaderboards(rs, tmp_path)
    page = (tmp_path / "toy.md").read_text()
    assert f"| mopoe·{hb} | `{_config_hash(b)[:12]}` | K=1, beta=2.5 | 3         |" in page
    assert "Model configs" in page and lb.COMPUTE_NOTE in page


def test_config_hashes_that_share_their_first_digits_are_shown_longer():
    short = lb.short_hashes(["3fa2c1" + "0" * 58, "1234567" + "0" * 57, ""])
    assert sorted(short.values()) == ["123456", "3fa2c1", "?"]
    short = lb.short_hashes(["3fa2c1aa" + "0" * 56, "3fa2c1bb" + "0" * 56, "1234567" + "0" * 57])
    assert sorted(short.values()) == ["12345670", "3fa2c1aa", "3fa2c1bb"]


# ----------------------------------------------------------------- learning curves and equal compute
def write_curves(folder: Path, total: int, val, eval_every: int = 500, log_every: int = 250) -> None:
    """A curves.csv as the trainer writes it: a log row every `log_every` samples; on evaluation rows the
    validation columns (val(samples) for the k = 1 coherence), empty elsewhere."""
    cols = ["stage", "step", "samples", "loss", "kl", "lr", "samples_per_s", "val_selection",
            "val_coherence_cond_k1", "val_loss"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CURVES, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in range(log_every, total + 1, log_every):
            ev = s % eval_every == 0
            v = val(s) if ev else ""
            w.writerow(["vae", s // 50, s, 1000.0 / s, 0.5, 0.001, 100.0, v, v, 2.0 if ev else ""])


RUNS = {  # (model, seed): (train samples, converged, validation coherence at s samples)
    ("mopoe", 0): (2500, True, lambda s: 0.30 + s / 10000),
    ("mopoe", 1): (4000, False, lambda s: 0.32 + s / 10000),
    ("mvae", 0): (4000, True, lambda s: 0.20 + s / 20000),
    ("mvae", 1): (3000, True, lambda s: 0.24 + s / 20000),
}


def curve_records(folder: Path) -> Path:
    rs = []
    for (model, seed), (n, conv, val) in RUNS.items():
        r = v2rec(model, seed, _m(val(n), 3.0), converged=conv, samples=n)
        rs.append(r)
        write_curves(folder / r.dataset / r.model / r.run_id, n, val)
    return _write(rs, folder)


def test_equal_compute_reads_each_run_at_the_fewest_samples_any_run_trained_for(tmp_path):
    recs = curve_records(tmp_path / "records")
    df = lb.records_frame(load_records(recs))
    runs = lb.run_curves(df, recs)
    assert len(runs) == 4 and lb.val_column(runs) == "val_coherence_cond_k1"
    s, cells = lb.equal_compute(runs, "val_coherence_cond_k1")
    assert s == 2500  # mopoe seed 0 stopped at its plateau there
    # each run's last evaluation at or before 2500 samples: the one at 2500 (evaluations every 500)
    assert cells["mopoe"].values == pytest.approx((0.30 + 0.25, 0.32 + 0.25))
    assert cells["mvae"].values == pytest.approx((0.20 + 0.125, 0.24 + 0.125))
    assert cells["mopoe"].unconverged == 1 and cells["mvae"].unconverged == 0
    # the band: mopoe seed 0 trained to 2500 only, so beyond it the curve is seed 1's alone
    xs, mean, lo, hi = lb.curve_bands(runs, "val_coherence_cond_k1")["mopoe"]
    assert xs == [500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0]
    assert mean[0] == pytest.approx(0.36) and (lo[0], hi[0]) == pytest.approx((0.35, 0.37))
    assert mean[-1] == lo[-1] == hi[-1] == pytest.approx(0.72)


def test_equal_compute_is_read_in_flops_when_every_record_counts_its_stages(tmp_path):
    # mvae: one stage, 4,000 samples at 1e10 FLOP each (4e13). mld: a first stage of 2,000 samples at 2e10 (4e13),
    # then a prior stage of 2,000 at 5e9 (1e13): 5e13 in all. Both trained 4,000 samples, so at equal samples both
    # are read at 4,000; at equal FLOPs (the least is mvae's 4e13) mld is read at the end of its first stage. The
    # stages are listed in the record sorted by name (prior before vae), the curve gives their order.
    val = {"mvae": lambda s: 0.2 + s / 10000, "mld": lambda s: 0.1 + s / 5000}
    costs = {"mvae": {"vae": (4000, 4e13, 1e12)}, "mld": {"vae": (2000, 4e13, 2e12), "prior": (2000, 1e13, 5e11)}}
    recs = []
    for model, stages in costs.items():
        r = v2rec(model, 0, _m(0.5, 3.0), samples=4000, flops=sum(v[1] for v in stages.values()))
        r.stages = {name: {"samples": n, "train_flops": f, "flops_per_step": per_step, "batch_size": 100,
                           "converged": True, "stop_reason": "plateau", "selection": "val_coherence_cond_k1"}
                    for name, (n, f, per_step) in sorted(stages.items())}
        folder = tmp_path / "records" / r.dataset / r.model / r.run_id
        folder.mkdir(parents=True)
        with open(folder / CURVES, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["stage", "step", "samples", "loss", "val_selection", "val_coherence_cond_k1"])
            done = 0
            for name in ("vae", "prior"):
                if name not in stages:
                    continue
                for n in range(500, int(stages[name][0]) + 1, 500):
                    w.writerow([name, n // 100, done + n, 1.0, val[model](done + n), val[model](done + n)])
                done += int(stages[name][0])
        recs.append(r)
    root = _write(recs, tmp_path / "records")
    runs = lb.run_curves(lb.records_frame(load_records(root)), root)
    col = "val_coherence_cond_k1"
    assert lb.compute_axis(runs, col) == "flops"
    mld = next(c for c in runs if c.entry == "mld")
    assert mld.total_flops == 5e13 and list(mld.flops[col][:4]) == [1e13, 2e13, 3e13, 4e13]
    assert mld.flops[col][-1] == pytest.approx(5e13)
    s, cells = lb.equal_compute(runs, col, "flops")
    assert s == 4e13 and cells["mvae"].values == pytest.approx((0.6,)) and cells["mld"].values == pytest.approx((0.5,))
    s, cells = lb.equal_compute(runs, col, "samples")
    assert s == 4000 and cells["mld"].values == pytest.approx((0.9,))
    out = tmp_path / "lb"
    lb.write_leaderboards(load_records(root), out, records_dir=root)
    page = (out / "toy.md").read_text()
    assert "validation `val_coherence_cond_k1` after 0.04 PFLOP of training, the least any of these runs spent" in page
    # a record without per-stage counts (v2rec's) puts the family back on samples
    runs.append(lb.run_curves(lb.records_frame(load_records(curve_records(tmp_path / "old"))), tmp_path / "old")[0])
    assert lb.compute_axis(runs, col) == "samples"


def test_collect_copies_the_sample_grids_and_the_page_shows_one_row_per_model(tmp_path):
    results, records, out = tmp_path / "runs", tmp_path / "lb" / "records", tmp_path / "lb"
    grids = {"samples_joint": "samples_joint.png", "samples_cross": "samples_cross.png"}
    rs = [v2rec("mvae", 1, _m(0.4, 4.0)), v2rec("mvae", 0, _m(0.4, 4.0)), v2rec("mopoe", 0, _m(0.5, 3.0))]
    for r in rs[:2]:
        r.artifacts = dict(grids, elsewhere="../../outside.png")  # not a plain file name: never copied
    rs[2].artifacts = {"samples_joint": "samples_joint.png"}  # its run wrote no grid file: no row
    _write(rs, results)
    for r in rs[:2]:
        for name in grids.values():
            (results / r.dataset / r.model / r.run_id / name).write_bytes(f"png {r.seed} {name}".encode())
    copied, _ = lb.collect_records(results, records)
    assert len(copied) == 3
    for r in rs[:2]:
        got = sorted(p.name for p in (records / r.dataset / r.model / r.run_id).iterdir())
        assert got == ["record.json", "samples_cross.png", "samples_joint.png"]
    assert not list(records.rglob("outside.png"))
    lb.write_leaderboards(load_records(records), out, records_dir=records)
    page = (out / "toy.md").read_text()
    assert "Sample grids (M = 2): one seed of each model" in page
    row = _row(page.split("Sample grids (M = 2)")[1], "mvae")  # the lowest seed's grids, linked into the records
    link = f"records/toy/mvae/{rs[1].run_id}"
    assert row[:2] == ["mvae", "0"] and row[2] == f"![mvae samples_joint, seed 0]({link}/samples_joint.png)"
    assert row[3] == f"![mvae samples_cross, seed 0]({link}/samples_cross.png)"
    assert "samples_joint, seed 0](records/toy/mopoe" not in page


def test_the_learning_curve_plot_is_written_and_linked_and_the_pages_are_byte_identical(tmp_path):
    out = tmp_path / "lb"
    recs = curve_records(out / "records")
    assert main(["leaderboard", "--results", str(recs), "--out", str(out)]) == 0
    first = _tree(out)
    fam = lb.family_hash(dict(V2, n_modalities=2))[:12]
    png = f"plots/toy/{fam}-val_coherence_cond_k1-vs-samples-M2.png"
    assert png in first and len(first[png]) > 5000 and not re.search(rb"tEXt|iTXt|zTXt|tIME", first[png])
    page = first["toy.md"].decode()
    assert f"![validation val_coherence_cond_k1 vs training samples at M = 2]({png})" in page
    assert "At equal training compute (M = 2): validation `val_coherence_cond_k1` at 2500 training samples" in page
    eq = page.split("At equal training compute")[1]
    assert _row(eq, "mopoe")[1:] == ["2", f"**0.560 ± 0.014**†{lb.UNCONVERGED_MARK}"]
    assert _row(eq, "mvae")[1:] == ["2", "0.345 ± 0.028"]
    assert main(["leaderboard", "--results", str(recs), "--out", str(out)]) == 0
    assert _tree(out) == first
    subprocess.run([sys.executable, "-m", "shala_bench.cli", "leaderboard", "--results", str(recs), "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "7"})
    assert _tree(out) == first


def test_runs_without_curves_are_skipped_quietly_and_a_broken_curve_with_a_warning(tmp_path, capsys):
    out = tmp_path / "lb"
    recs = _write([v2rec("mvae", s, _m(0.4, 4.0)) for s in (0, 1)], out / "records")
    lb.write_leaderboards(load_records(recs), out, records_dir=recs)
    page = (out / "toy.md").read_text()
    assert "learning curve" not in page and "equal training compute" not in page
    assert not list((out / "plots" / "toy").glob("*-vs-samples-*.png")) and capsys.readouterr().err == ""
    broken = next(recs.rglob("record.json")).parent / CURVES
    broken.write_text("stage,step\nvae,1\n")
    lb.write_leaderboards(load_records(recs), out, records_dir=recs)
    assert "has no `samples` column" in capsys.readouterr().err


def test_collect_copies_the_curves_beside_each_record(tmp_path, capsys):
    runs = curve_records(tmp_path / "runs")
    recs = tmp_path / "lb" / "records"
    assert main(["leaderboard", "--collect", str(runs), "--results", str(recs), "--out", str(tmp_path / "lb")]) == 0
    copied = sorted(p.relative_to(recs).as_posix() for p in recs.rglob(CURVES))
    assert len(copied) == 4 and all((recs / c).read_bytes() == (runs / c).read_bytes() for c in copied)
    assert "collected 4 record(s)" in capsys.readouterr().out
    assert list((tmp_path / "lb" / "plots" / "toy").glob("*-vs-samples-M2.png"))


def test_a_quick_recipe_lists_every_departure_from_the_paper_profile():
    from shala_bench.protocol import make_protocol
    from shala_bench.registry import get_registry

    ds = get_registry().get_dataset("polymnist-synth")
    quick, paper = make_protocol(ds, "quick").to_dict(), make_protocol(ds, "paper").to_dict()
    line = lb.departures_line(quick)
    for k in ("n_train", "lr", "max_train_samples", "eval_n"):
        assert f"{k} {quick[k]} (paper {paper[k]})" in line
    assert "batch_size" not in line and "likelihood_scale" not in line  # the field's, as in paper
    assert lb.departures_line(paper) == "" and lb.departures_line({**quick, "protocol_version": 1}) == ""
