"""Tables and modality-scaling curves from run records; the generated leaderboard pages.

Records are the only input; every table and plot is a view of them (never typed by hand):

- ``compare_tables``: one table per (dataset, M, protocol hash, metric versions): mean ± std over
  seeds, the number of seeds, the best in bold and a mark where the best beats the runner-up
  beyond seed noise. Rows with different protocol hashes or metric versions are never ranked
  together.
- ``scaling``: per *protocol family* (the protocol without ``n_modalities``, and the metric
  versions, so the runs of one sweep over M belong together), the headline metrics vs the number
  of modalities M a model was trained with, and conditional coherence vs the number k of given
  modalities at the largest M.

Which way a column is better, what it means and which marks it takes come from the
``MetricEntry`` that declares the key (``registry.MetricKey``), never from its name; a column no
installed metric declares is shown unranked.
- ``write_leaderboards``: ``<out>/README.md`` (an index) and ``<out>/<dataset>.md`` with the
  tables and the PNG plots, byte-identical when run twice on the same records.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shala_bench.leaderboard_samples import copy_grids, grids_json, sample_grid_lines
from shala_bench.results import RECORD, RunRecord, atomic_write_text

# Columns of a per-M table by default, in order (those present in the records); more with --metric.
DEFAULT_METRICS = ["coherence_cond_bal_k1", "coherence_cond_bal_kmax", "coherence_joint_kappa", "coherence_joint",
                   "coherence_cond_bal_mean", "coherence_cond_mean",
                   "fd_mean", "fd_cond_mean", "fid_mean", "fid_cond_mean", "probe_all", "test_nll"]
# The modality-scaling curves, y-axis metric vs M: numbers that mean the same at every M (k = 1, k = M - 1,
# chance-corrected joint), each the first of its alternatives present (records of metric version 1 have the
# plain accuracy and the raw agreement only).
SCALING_METRICS = [("coherence_cond_bal_k1", "coherence_cond_k1"), ("coherence_cond_bal_kmax", "coherence_cond_kmax"),
                   ("coherence_joint_kappa", "coherence_joint"), ("fd_mean",), ("fd_cond_mean",)]
# Conditional coherence vs k: per-k keys, balanced where recorded.
K_SERIES = (re.compile(r"^coherence_cond_bal_k(\d+)$"), re.compile(r"^coherence_cond_k(\d+)$"))
BOUND_SUFFIX = "_bound"  # metric "<m>_bound" (a string) names the bound that metric <m> evaluates

ALPHA = 0.05  # one-sided Welch's t-test level of the significance mark
SIG_MARK = "†"
QUICK_FID_MARK = "‡"
CHANCE_MARK = "§"
UNCONVERGED_MARK = "¶"
CHANCE_P = 0.01  # one-sided binomial test level of "above chance"
MAJORITY_MAX = 0.5  # a seed whose prior samples give one class more than this share of a modality is collapsed
LEGEND = (
    "Cells: mean ± sample standard deviation over seeds (ddof = 1; no ± with a single seed). "
    "**Bold**: the best mean of the column (↑ higher is better, ↓ lower is better, as the metric that writes the "
    "column declares it; a column without an arrow is not ranked). "
    f"{SIG_MARK}: the best is better than the runner-up beyond seed noise — one-sided Welch's t-test over seeds "
    f"(`scipy.stats.ttest_ind(equal_var=False)`), p < {ALPHA}, tested only where both have ≥ 2 seeds. "
    "Rows with different protocol hashes or metric versions are never ranked together; a bound (e.g. test_nll) is "
    "ranked only against the same bound, named in brackets. "
    f"{CHANCE_MARK}: a coherence cell with at least one seed whose conditional coherence is not above chance — "
    f"one-sided binomial test of its hits among the min(eval_n, n_test) test tuples against 1/C "
    f"(`scipy.stats.binomtest`), p ≥ {CHANCE_P}, on the balanced accuracy where recorded (a constant answer scores "
    "exactly 1/C), else on the plain accuracy; on a joint-coherence cell also a seed whose prior samples are "
    "collapsed — the agreement p_o of its joint_n samples is not above the chance agreement p_e (the same binomial "
    f"test, against p_e; that is, kappa not above 0), or one class takes more than {MAJORITY_MAX} of one "
    "modality's samples. Such a seed's coherences are not a result."
)
CONVERGENCE_LEGEND = (
    f"{UNCONVERGED_MARK}: a cell with at least one seed whose training did not converge — a stage stopped at the "
    "budget (`max_train_samples`) before its validation selection metric reached a plateau (the record says "
    "`converged: false`); the seed stays in the mean. Records that do not say (written before protocol v2) are "
    "never marked."
)


def legend(convergence: bool = False) -> str:
    """The cell legend; with `convergence` (some record says whether it converged) also the meaning of the
    unconverged mark."""
    return LEGEND + (" " + CONVERGENCE_LEGEND if convergence else "")


class Catalog:
    """What the installed metrics declare about record keys (`MetricEntry.keys`), looked up once per key."""

    def __init__(self, registry=None):
        self._registry, self._keys = registry, {}

    def key(self, metric: str):
        """The `MetricKey` that declares `metric`, or None when no installed metric does."""
        if metric not in self._keys:
            from shala_bench.registry import get_registry

            found = (self._registry or get_registry()).metric_key(metric)
            self._keys[metric] = found[1] if found else None
        return self._keys[metric]

    def direction(self, metric: str) -> str | None:
        k = self.key(metric)
        return k.direction if k else None


def _lower(key) -> bool | None:
    """True: lower is better; False: higher is; None: not ranked (undeclared, or declared without direction)."""
    return None if key is None or key.direction is None else key.direction == "lower"


def arrow_of(key) -> str:
    return {True: "↓", False: "↑"}.get(_lower(key), "")


def canonical_versions(versions) -> dict[str, int]:
    """Metric versions that differ from 1, sorted: a record without them had every metric at version 1."""
    if not isinstance(versions, dict):
        return {}
    return {k: int(v) for k, v in sorted(versions.items()) if int(v) != 1}


def versions_label(versions: dict[str, int]) -> str:
    return ", ".join(f"{k} v{v}" for k, v in versions.items())


def family_hash(protocol: dict, metric_versions: dict | None = None) -> str:
    """Hash of the protocol without ``n_modalities`` (canonical JSON as in Protocol.to_json) and, where any
    metric is not at version 1, of the metric versions too: a metric version change splits families."""
    rest = {k: v for k, v in protocol.items() if k != "n_modalities"}
    versions = canonical_versions(metric_versions)
    if versions:
        rest = {"protocol": rest, "metric_versions": versions}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------- records -> frame
META = ["dataset", "model", "entry", "config_hash", "config_short", "seed", "M", "profile", "protocol_version",
        "protocol_hash", "metric_versions", "family_hash", "run_id", "chance_level", "at_chance", "collapsed", "converged",
        "budget_stages", "selection", "config_json", "run_train_s", "run_eval_s", "run_train_samples",
        "run_train_pflop", "run_train_h", "run_eval_h", "run_created", "run_wall_s", "run_reused_s", "stage_costs", "grids",
        "run_device", "run_threads"]
# Compute columns of a per-M table (shown when recorded; never ranked): frame column -> header.
COMPUTE_COLUMNS = {"run_train_samples": "samples to convergence", "run_train_pflop": "train PFLOP",
                   "run_train_h": "train h", "run_eval_h": "eval h"}
COMPUTE_NOTE = ("`samples to convergence`: the training samples of the run over all its stages (for a seed marked "
                f"{UNCONVERGED_MARK}, the budget it hit); `train PFLOP`: its training compute as the record counts it, "
                "in 10^15 FLOP; `train h` / `eval h`: the measured wall-clock hours of its training (validation "
                "included) and of its evaluation, on the hardware the compute line names — the cost of one cell; "
                "all are means over seeds, shown, never ranked.")
SHORT_CONFIG = 6  # hex digits of a config hash in a row name (more where two configs of a model share them)
VERSIONS_KEY = "metric_versions"  # evaluate.VERSIONS_KEY: {metric: version} in a record's metrics


def registered_chances(datasets) -> dict[str, float | None]:
    """Each dataset's registered `coherence_chance` (None when it is not registered), from one registry."""
    if not datasets:
        return {}
    from shala_bench.registry import get_registry

    table = get_registry().datasets
    return {ds: getattr(table[ds].entry, "coherence_chance", None) if ds in table else None for ds in datasets}


def coherence_chance(r: RunRecord, registered: dict[str, float | None]) -> float | None:
    """The chance level of r's conditional coherence: recorded by the evaluation, or for records written
    before it was, the registered dataset's; None when unknown or multi-label (AUROC is not a proportion)."""
    v = r.metrics.get("coherence_cond_chance")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return registered.get(r.dataset)


def not_above_chance(coherence: float, chance: float, n: int) -> bool:
    """One-sided binomial test: are round(coherence * n) hits in n tuples no better than chance (p >= CHANCE_P)?

    The coherence is a mean over subsets and generated modalities of the same n test tuples; treating it as
    n independent hits overstates its noise, so the test flags a borderline seed rather than pass it."""
    from scipy.stats import binomtest

    hits = min(n, max(0, round(coherence * n)))
    return bool(binomtest(hits, n, min(max(chance, 0.0), 1.0), alternative="greater").pvalue >= CHANCE_P)


def _number(m: dict, key: str) -> float | None:
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _chance_of(r: RunRecord, registered: dict[str, float | None]) -> tuple[float, bool]:
    """(chance level, whether the conditional coherence is not above it): balanced where recorded."""
    chance = coherence_chance(r, registered)
    coh = _number(r.metrics, "coherence_cond_bal_mean")
    coh = _number(r.metrics, "coherence_cond_mean") if coh is None else coh
    n = min(int(r.protocol.get("eval_n", 0)), int(r.protocol.get("n_test", 0)))
    if chance is None or coh is None or n <= 0:
        return math.nan, False
    return chance, not_above_chance(coh, chance, n)


def collapsed(r: RunRecord) -> bool:
    """Whether r's prior samples are collapsed: the joint agreement p_o of its joint_n samples is not above the
    chance agreement p_e (one-sided binomial test, i.e. kappa not above 0), or one class takes more than
    MAJORITY_MAX of a modality's samples. False for records that did not record p_e (metric version 1)."""
    p_o, p_e = _number(r.metrics, "coherence_joint"), _number(r.metrics, "coherence_joint_chance")
    majority, n = _number(r.metrics, "coherence_joint_majority"), int(r.protocol.get("joint_n", 0))
    if majority is not None and majority > MAJORITY_MAX:
        return True
    return p_o is not None and p_e is not None and n > 0 and not_above_chance(p_o, p_e, n)


def _kmax(metrics: dict, M: int) -> dict:
    """coherence_cond_kmax for records written before evaluation recorded it: their k = M - 1 value."""
    v = _number(metrics, f"coherence_cond_k{M - 1}")
    return {"coherence_cond_kmax": v} if "coherence_cond_kmax" not in metrics and v is not None else {}


def records_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per ok record: META columns and every numeric metric (others are dropped)."""
    rows = []
    # One record per (dataset, model, config, protocol, seed): the latest (a re-evaluation supersedes the first).
    latest: dict[tuple, RunRecord] = {}
    for r in sorted((r for r in records if r.ok), key=lambda r: (r.created, r.run_id)):
        latest[(r.dataset, r.model, _config_hash(r), r.protocol_hash, r.seed)] = r
    # one registry lookup per dataset, and none when every record carries its chance level
    registered = registered_chances({r.dataset for r in latest.values() if "coherence_cond_chance" not in r.metrics})
    for r in latest.values():
        versions = canonical_versions(r.metrics.get(VERSIONS_KEY))
        row = {"dataset": r.dataset, "model": r.model, "config_hash": _config_hash(r), "seed": r.seed,
               "M": r.n_modalities, "profile": r.profile,
               "protocol_version": r.protocol.get("protocol_version", 0), "protocol_hash": r.protocol_hash,
               "metric_versions": versions_label(versions), "family_hash": family_hash(r.protocol, versions),
               "run_id": r.run_id}
        row["chance_level"], row["at_chance"] = _chance_of(r, registered)
        row["collapsed"] = collapsed(r)
        row.update(_training(r))
        row["run_train_s"], row["run_eval_s"] = (float(r.timings.get(k) or math.nan) for k in ("train_s", "eval_s"))
        row["run_train_h"], row["run_eval_h"] = row["run_train_s"] / 3600, row["run_eval_s"] / 3600
        row["run_created"] = r.created
        # a stage reused from another run (trainer.StageCache) is in this cell's training time, as it would cost
        # alone, but this run did not spend it: not in its wall interval, and counted once in what the grid cost
        row["run_reused_s"] = float(r.timings.get("reused_s") or 0.0)
        row["run_wall_s"] = sum(float(r.timings.get(k) or 0.0) for k in ("data_s", "train_s", "eval_s")) \
            - row["run_reused_s"]
        row["run_device"], row["run_threads"] = r.hardware.get("device", "?"), r.hardware.get("torch_threads", "?")
        row.update({k: float(v) for k, v in r.metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        row.update(_kmax(r.metrics, r.n_modalities))
        # The name of the bound behind a bound-valued metric (test_nll -> test_nll_bound = "elbo", ...).
        row.update({k: v for k, v in r.metrics.items() if k.endswith(BOUND_SUFFIX) and isinstance(v, str)})
        rows.append(row)
    df = pd.DataFrame(rows, columns=META if not rows else None)
    df["entry"], df["config_short"] = entries(df)
    return df.sort_values(["dataset", "entry", "M", "seed", "protocol_hash", "metric_versions"],
                          kind="stable").reset_index(drop=True)


def _config_hash(r: RunRecord) -> str:
    h = getattr(r, "config_hash", "")
    return h if isinstance(h, str) else ""


def _positive(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else math.nan


def _training(r: RunRecord) -> dict:
    """What protocol v2 records say about training, as frame columns; NaN / "" where a record does not say
    (records written before v2): converged 1.0 / 0.0 / NaN, the stages that stopped at the budget, the
    selection metric of each stage, the model's config (canonical JSON), training samples and PFLOP."""
    conv = getattr(r, "converged", None)
    stages = r.stages if isinstance(getattr(r, "stages", None), dict) else {}
    stages = {k: v for k, v in stages.items() if isinstance(v, dict)}
    config = r.config if isinstance(getattr(r, "config", None), dict) else {}
    costs = stage_costs(r)
    return {"converged": {True: 1.0, False: 0.0}.get(conv, math.nan) if isinstance(conv, bool) else math.nan,
            "budget_stages": ", ".join(k for k, v in stages.items() if v.get("stop_reason", v.get("stop")) == "budget"),
            "selection": ", ".join(f"{k}: {v['selection']}" for k, v in stages.items() if v.get("selection")),
            "config_json": json.dumps(config, sort_keys=True, separators=(",", ":")) if config else "",
            "run_train_samples": _positive(getattr(r, "train_samples", 0)),
            "run_train_pflop": _positive(getattr(r, "train_flops", 0.0)) / 1e15,
            "stage_costs": json.dumps(costs, sort_keys=True) if costs else "",
            "grids": grids_json(getattr(r, "artifacts", None))}


def short_hashes(hashes) -> dict[str, str]:
    """Each config hash -> its first SHORT_CONFIG hex digits, more where two of them would share those; "" -> "?"
    (a record that did not say its config)."""
    real = sorted({h for h in hashes if h})
    n = SHORT_CONFIG
    while len({h[:n] for h in real}) < len(real):
        n += 2
    return {h: h[:n] if h else "?" for h in set(hashes)}


def entries(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(row name, short config hash) of each record. The row name is its model, or `model·<short config hash>`
    where that model has records of more than one config in the protocol family (rows of different configs are
    never merged); the short hashes are unique within the family."""
    if df.empty:
        return pd.Series([], dtype=object, index=df.index), pd.Series([], dtype=object, index=df.index)
    out, shorts = df["model"].astype(object).copy(), pd.Series("", index=df.index, dtype=object)
    for _, fam in df.groupby(["dataset", "family_hash"], sort=True):
        short = short_hashes(fam["config_hash"])
        shorts[fam.index] = [short[h] if h else "" for h in fam["config_hash"]]
        for _, g in fam.groupby("model", sort=True):
            if g["config_hash"].nunique() > 1:
                out[g.index] = [f"{m}·{short[h]}" for m, h in zip(g["model"], g["config_hash"])]
    return out, shorts


# ----------------------------------------------------------------- statistics
@dataclass
class Cell:
    """Summary of one metric of one model over its seeds."""

    values: tuple[float, ...]
    best: bool = False
    significant: bool = False  # the best, and beyond seed noise vs the runner-up
    bound: str = ""  # for a bound-valued metric: the name of the bound, ranked only against the same bound
    at_chance: int = 0  # coherence metrics: seeds whose conditional coherence is not above chance
    unconverged: int = 0  # seeds whose record says `converged: false`

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        # Sample standard deviation over seeds (ddof=1); undefined for one seed.
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else math.nan


def cell(values) -> Cell:
    return Cell(tuple(float(v) for v in values if v is not None and not math.isnan(float(v))))


def metric_cell(g: pd.DataFrame, metric: str, key=None) -> Cell:
    """The seeds of `g` (one model) for `metric`; a key declared with a chance test also counts the seeds
    that fail it: "conditional", conditional coherence not above chance; "joint", that or collapsed samples."""
    if metric not in g:
        return Cell(())
    c = cell(g[metric])
    if "converged" in g:
        c.unconverged = int((g["converged"] == 0.0)[g[metric].notna()].sum())
    test = key.chance if key is not None else None
    if test and "at_chance" in g:
        flagged = g["at_chance"].astype(bool)
        if test == "joint" and "collapsed" in g:
            flagged = flagged | g["collapsed"].astype(bool)
        c.at_chance = int(flagged[g[metric].notna()].sum())
    return c


def welch_better(best: Cell, other: Cell, lower: bool) -> bool:
    """One-sided Welch's t-test: is `best` better than `other` at level ALPHA? Needs >= 2 seeds each."""
    from scipy.stats import ttest_ind

    if best.n < 2 or other.n < 2:
        return False
    with warnings.catch_warnings():  # identical seeds warn about precision loss; the p-value says enough
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(best.values, other.values, equal_var=False, alternative="less" if lower else "greater")
    return bool(res.pvalue < ALPHA)  # NaN (e.g. two constant, equal samples) -> False


def rank(cells: dict[str, Cell], lower: bool) -> None:
    """Mark the best cell(s) (ties share it) and whether the best beats the runner-up beyond seed noise. A
    coherence cell with a seed at chance or collapsed (§) is not a result, so it is never the best: a collapsed
    prior's raw joint agreement is high because every sample is one class."""
    if sum(1 for c in cells.values() if c.n) < 2:
        return
    scored = {k: c for k, c in cells.items() if c.n and not c.at_chance}
    if not scored:
        return
    sign = 1.0 if lower else -1.0
    order = sorted(scored, key=lambda k: (sign * scored[k].mean, k))
    top = sign * scored[order[0]].mean
    best = [k for k in order if sign * scored[k].mean == top]
    for k in best:
        scored[k].best = True
    if len(best) == 1 and len(order) > 1:
        scored[best[0]].significant = welch_better(scored[best[0]], scored[order[1]], lower)


# ----------------------------------------------------------------- per-M tables
@dataclass
class Table:
    """The models trained under one protocol hash and metric versions (one dataset, one M), ranked per metric."""

    dataset: str
    M: int
    protocol_hash: str
    profile: str
    protocol_version: int
    family_hash: str
    metrics: list[str]
    # row (model, or model·config where a model has several configs) -> (seeds, {metric or compute column: Cell})
    rows: dict[str, tuple[int, dict[str, Cell]]] = field(default_factory=dict)
    n_records: int = 0
    metric_versions: str = ""  # metrics not at version 1, e.g. "coherence_joint v2"
    keys: dict = field(default_factory=dict)  # metric -> its MetricKey (None: no installed metric declares it)
    compute: list[str] = field(default_factory=list)  # COMPUTE_COLUMNS present (shown after the metrics, unranked)
    configs: dict[str, str] = field(default_factory=dict)  # row -> its config hash ("" where not recorded)
    shorts: dict[str, str] = field(default_factory=dict)  # row -> its short config hash, as in row names
    convergence: bool = False  # some record says whether it converged

    def lower(self, metric: str) -> bool | None:
        return _lower(self.keys.get(metric))

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "M": self.M, "protocol_hash": self.protocol_hash, "profile": self.profile,
                "protocol_version": self.protocol_version, "metric_versions": self.metric_versions,
                "family_hash": self.family_hash,
                "rows": [{"model": model, "seeds": seeds,
                          **({"config_hash": self.configs[model]} if self.configs.get(model) else {}),
                          "metrics": {m: {"mean": _num(c.mean), "std": _num(c.std), "n": c.n, "best": c.best,
                                          "significant": c.significant, "lower_is_better": self.lower(m),
                                          "seeds_at_chance": c.at_chance,
                                          **({"seeds_unconverged": c.unconverged} if self.convergence else {}),
                                          **({"bound": c.bound} if c.bound else {})}
                                      for m, c in cells.items()}}
                         for model, (seeds, cells) in self.rows.items()]}


def _num(x: float):
    return None if math.isnan(x) else x


def _present(part: pd.DataFrame, metrics: list[str]) -> list[str]:
    return [m for m in metrics
            if m in part.columns and pd.api.types.is_numeric_dtype(part[m]) and part[m].notna().any()]


def default_metrics(df: pd.DataFrame) -> list[str]:
    return _present(df, DEFAULT_METRICS)


def build_table(part: pd.DataFrame, metrics: list[str], catalog: Catalog | None = None) -> Table:
    catalog = catalog or Catalog()
    first = part.iloc[0]
    t = Table(first["dataset"], int(first["M"]), first["protocol_hash"], first["profile"],
              int(first["protocol_version"]), first["family_hash"], metrics, n_records=len(part),
              metric_versions=first.get("metric_versions", "") or "", keys={m: catalog.key(m) for m in metrics},
              compute=_present(part, list(COMPUTE_COLUMNS)),
              convergence=bool("converged" in part and part["converged"].notna().any()))
    for model, g in part.groupby("entry", sort=True):
        cells = {m: metric_cell(g, m, t.keys.get(m)) for m in metrics + t.compute}
        for m, c in cells.items():
            if m + BOUND_SUFFIX in g and c.n:
                c.bound = ",".join(sorted(g[m + BOUND_SUFFIX].dropna().unique()))
        t.rows[model] = (int(g["seed"].nunique()), cells)
        t.configs[model] = g["config_hash"].iloc[0] if "config_hash" in g else ""
        t.shorts[model] = g["config_short"].iloc[0] if "config_short" in g else t.configs[model][:SHORT_CONFIG]
    for m in metrics:
        if t.lower(m) is None:  # no declared direction: shown, not ranked
            continue
        # Bounds of different names are different quantities: rank each bound apart.
        col = {model: cells[m] for model, (_, cells) in t.rows.items()}
        for bound in sorted({c.bound for c in col.values()}):
            rank({k: c for k, c in col.items() if c.bound == bound}, t.lower(m))
    return t


def compare_tables(records: list[RunRecord], dataset: str | None = None,
                   metrics: list[str] | None = None, registry=None) -> list[Table]:
    """One Table per (dataset, M, protocol hash, metric versions); within a (dataset, M) the one with most
    records first. Directions and marks come from the metrics registered in `registry` (default: installed)."""
    return frame_tables(records_frame(records), dataset, metrics, Catalog(registry))


def frame_tables(df: pd.DataFrame, dataset: str | None = None, metrics: list[str] | None = None,
                 catalog: Catalog | None = None) -> list[Table]:
    catalog = catalog or Catalog()
    if dataset:
        df = df[df["dataset"] == dataset]
    if df.empty:
        return []
    out = []
    for (_, _), dm in df.groupby(["dataset", "M"], sort=True):
        parts = [p for _, p in dm.groupby(["protocol_hash", "metric_versions"], sort=True)]
        parts.sort(key=lambda p: -len(p))  # stable: ties keep hash order
        for p in parts:
            cols = _present(p, metrics) if metrics else default_metrics(p)
            out.append(build_table(p, cols, catalog))
    return out


# ----------------------------------------------------------------- formatting
def fmt_value(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def decimals_for(x: float) -> int:
    return 1 if abs(x) >= 100 else 3


def significant_decimals(x: float, digits: int = 3) -> int:
    """Decimals that show `digits` significant digits of x in fixed point (at most 6)."""
    return 3 if x == 0 or not math.isfinite(x) else max(0, min(6, digits - 1 - math.floor(math.log10(abs(x)))))


def fmt_cell(c: Cell, decimals: int | None = None) -> str:
    if not c.n:
        return "–"
    d = decimals_for(c.mean) if decimals is None else decimals
    s = fmt_value(c.mean, d) if c.n < 2 else f"{fmt_value(c.mean, d)} ± {fmt_value(c.std, d)}"
    if c.best:
        s = f"**{s}**"
    s += SIG_MARK if c.significant else ""
    s += CHANCE_MARK if c.at_chance else ""
    s += UNCONVERGED_MARK if c.unconverged else ""
    return f"{s} ({c.bound})" if c.bound else s


def fmt_compute(c: Cell, column: str) -> str:
    """Training samples as whole numbers; hours with two decimals; PFLOP with three significant digits."""
    if column in ("run_train_h", "run_eval_h"):
        return fmt_cell(c, 2)
    return fmt_cell(c, 0 if column == "run_train_samples" else significant_decimals(c.mean) if c.n else None)


def _github(rows: list[list[str]], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def quick_fid(key, profile: str) -> bool:
    """A key declared `quick_biased` (Inception FID: few samples, biased upward) from a profile other than `paper`."""
    return bool(key is not None and key.quick_biased and profile != "paper")


def metric_header(metric: str, profile: str, key=None) -> str:
    a = arrow_of(key)
    return (f"{metric} {a}" if a else metric) + (QUICK_FID_MARK if quick_fid(key, profile) else "")


def columns_legend(keys: dict) -> str:
    """One line naming what each shown column means, from the entries that declare them."""
    parts = []
    for m, key in keys.items():
        a = arrow_of(key)
        what = key.description if key is not None else "no installed metric declares it: not ranked"
        parts.append(f"`{m}`{' ' + a if a else ''} {what}")
    return "Columns: " + "; ".join(parts) + "." if parts else ""


def _union_keys(tables: list[Table]) -> dict:
    keys: dict = {}
    for t in tables:
        for m in t.metrics:
            keys.setdefault(m, t.keys.get(m))
    return keys


def quick_fid_note(profile: str, protocol: dict | None) -> str:
    n = (protocol or {}).get("fid_n", "?")
    return (f"{QUICK_FID_MARK} FID of the `{profile}` profile: {n} samples per modality, biased upward with so few "
            "samples; comparable only within this table, not with published (10k-sample) FIDs.")


def table_markdown(t: Table, protocol: dict | None = None) -> str:
    """The table of one protocol: a row per model (per model and config where a model has several), its
    seeds, its config hash where recorded, each metric, then the compute columns where recorded."""
    configs = any(t.configs.values())
    rows = [[model, str(seeds)] + ([f"`{t.shorts[model]}`" if t.shorts.get(model) else "–"] if configs else [])
            + [fmt_cell(cells[m]) for m in t.metrics] + [fmt_compute(cells[m], m) for m in t.compute]
            for model, (seeds, cells) in t.rows.items()]
    md = _github(rows, ["model", "seeds"] + (["config"] if configs else [])
                 + [metric_header(m, t.profile, t.keys.get(m)) for m in t.metrics]
                 + [COMPUTE_COLUMNS[m] for m in t.compute])
    if any(quick_fid(t.keys.get(m), t.profile) for m in t.metrics):
        md += "\n\n" + quick_fid_note(t.profile, protocol)
    return md


def table_title(t: Table) -> str:
    versions = f", metrics {t.metric_versions}" if t.metric_versions else ""
    return (f"{t.dataset} — M = {t.M} — profile `{t.profile}`, protocol v{t.protocol_version} "
            f"`{t.protocol_hash[:12]}`{versions}")


def compare_markdown(tables: list[Table], protocols: dict[str, dict] | None = None) -> str:
    columns = columns_legend(_union_keys(tables))
    parts = [legend(any(t.convergence for t in tables)), "", *([columns, ""] if columns else [])]
    seen: dict[tuple[str, int], int] = {}
    for t in tables:
        key = (t.dataset, t.M)
        note = ""
        if seen.get(key):
            note = "\n\nA different protocol or metric versions from the table above: not ranked with it."
        seen[key] = seen.get(key, 0) + 1
        parts += [f"## {table_title(t)}{note}", "", table_markdown(t, (protocols or {}).get(t.protocol_hash)), ""]
    return "\n".join(parts)


def compare_csv(tables: list[Table]) -> str:
    """Long format: one line per (table, model, metric)."""
    rows = []
    for t in tables:
        for model, (seeds, cells) in t.rows.items():
            for m, c in cells.items():
                rows.append({"dataset": t.dataset, "M": t.M, "protocol_hash": t.protocol_hash, "profile": t.profile,
                             "protocol_version": t.protocol_version, "metric_versions": t.metric_versions,
                             "family_hash": t.family_hash, "model": model,
                             "seeds": seeds, "metric": m, "mean": _num(c.mean), "std": _num(c.std), "n": c.n,
                             "best": c.best, "significant": c.significant, "lower_is_better": t.lower(m),
                             "seeds_at_chance": c.at_chance, "bound": c.bound,
                             "seeds_unconverged": c.unconverged if t.convergence else None,
                             "config_hash": t.configs.get(model, "")})
    cols = ["dataset", "M", "protocol_hash", "profile", "protocol_version", "metric_versions", "family_hash", "model",
            "seeds", "metric", "mean", "std", "n", "best", "significant", "lower_is_better", "seeds_at_chance", "bound",
            "seeds_unconverged", "config_hash"]
    return pd.DataFrame(rows, columns=cols).to_csv(index=False, float_format="%.6g", lineterminator="\n")


def compare_json(tables: list[Table]) -> str:
    columns = {m: {"direction": k.direction if k else None, "description": k.description if k else None}
               for m, k in _union_keys(tables).items()}
    return json.dumps({"legend": legend(any(t.convergence for t in tables)), "columns": columns,
                       "tables": [t.to_dict() for t in tables]}, indent=2,
                      ensure_ascii=False)


# ----------------------------------------------------------------- modality scaling
@dataclass
class Curve:
    """y(x) per model: a Cell (the seeds) at each x, ranked per x."""

    dataset: str
    family_hash: str
    profile: str
    protocol_version: int
    metric: str
    xlabel: str
    xs: list[int]
    cells: dict[str, dict[int, Cell]]  # model -> x -> Cell
    key: object = None  # the MetricKey of `metric` (of its per-k keys for a curve over k)

    def series(self) -> dict[str, tuple[list[int], list[float], list[float]]]:
        out = {}
        for model, by_x in self.cells.items():
            xs = [x for x in self.xs if x in by_x and by_x[x].n]
            out[model] = (xs, [by_x[x].mean for x in xs], [by_x[x].std for x in xs])
        return out


def _rank_curve(cv: Curve) -> Curve:
    lower = _lower(cv.key)
    if lower is not None:
        for x in cv.xs:
            rank({m: by_x[x] for m, by_x in cv.cells.items() if x in by_x}, lower)
    return cv


def scaling_metrics(fam: pd.DataFrame) -> list[str]:
    """The first present of each SCALING_METRICS alternative, for one protocol family."""
    return [present[0] for alts in SCALING_METRICS if (present := _present(fam, list(alts)))]


def scaling_curves(fam: pd.DataFrame, catalog: Catalog | None = None) -> list[Curve]:
    """The headline metrics (SCALING_METRICS) vs M, for the records of one protocol family."""
    catalog = catalog or Catalog()
    first = fam.iloc[0]
    xs = sorted(int(m) for m in fam["M"].unique())
    out = []
    for metric in scaling_metrics(fam):
        key = catalog.key(metric)
        cells = {model: {int(M): metric_cell(gm, metric, key) for M, gm in g.groupby("M", sort=True)}
                 for model, g in fam.groupby("entry", sort=True)}
        out.append(_rank_curve(Curve(first["dataset"], first["family_hash"], first["profile"],
                                     int(first["protocol_version"]), metric, "number of modalities M", xs, cells,
                                     key)))
    return out


def k_curve(fam: pd.DataFrame, catalog: Catalog | None = None) -> tuple[int, Curve] | None:
    """Conditional coherence vs k at the largest M of the family that has per-k coherence (balanced where
    recorded, else plain)."""
    catalog = catalog or Catalog()
    for M in sorted(fam["M"].unique(), reverse=True):
        part = fam[fam["M"] == M]
        for pattern in K_SERIES:
            ks = {int(m.group(1)): c for c in part.columns if (m := pattern.match(c)) and part[c].notna().any()}
            if ks:
                break
        if not ks:
            continue
        ks = dict(sorted(ks.items()))
        key = catalog.key(next(iter(ks.values())))
        cells = {model: {k: metric_cell(g, col, key) for k, col in ks.items()}
                 for model, g in part.groupby("entry", sort=True)}
        first = part.iloc[0]
        name = next(iter(ks.values())).rsplit("_k", 1)[0]  # coherence_cond_bal or coherence_cond
        cv = Curve(first["dataset"], first["family_hash"], first["profile"], int(first["protocol_version"]),
                   name, "number of given modalities k", list(ks), cells, key)
        return int(M), _rank_curve(cv)
    return None


def k_curve_name(cv: Curve) -> str:
    """What a k_curve shows, in words: balanced where the records have it, else plain."""
    return ("balanced " if cv.metric.endswith("_bal") else "") + "conditional coherence"


def curve_markdown(cv: Curve, xname: str) -> str:
    rows = []
    for model, by_x in cv.cells.items():
        seeds = sorted({by_x[x].n for x in cv.xs if x in by_x and by_x[x].n})
        seeds_s = "–" if not seeds else (str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}")
        rows.append([model, seeds_s] + [fmt_cell(by_x.get(x, Cell(()))) for x in cv.xs])
    return _github(rows, ["model", "seeds"] + [f"{xname} = {x}" for x in cv.xs])


def plot_title(cv: Curve, what: str) -> str:
    return (f"{cv.dataset}: {what} (mean ± std over seeds)\n"
            f"profile {cv.profile}, protocol v{cv.protocol_version}, family {cv.family_hash[:12]}")


# ----------------------------------------------------------------- the pages
@dataclass
class Family:
    dataset: str
    family_hash: str
    frame: pd.DataFrame
    protocol: dict  # of any record of the family (only n_modalities differs)
    hashes: dict[int, str]  # M -> protocol hash


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def families(df: pd.DataFrame, protocols: dict[str, dict]) -> list[Family]:
    """Protocol families of each dataset, the current one first: the newest protocol version, then the family
    whose newest record is the latest (a reader opens the page for today's recipe; an older recipe's snapshot
    stays below it, its own section), then the most records (ties: by hash)."""
    out = []
    for ds, d in df.groupby("dataset", sort=True):
        fams = []
        for fh, f in d.groupby("family_hash", sort=True):
            hashes = {int(M): h for M, h in f.groupby("M", sort=True)["protocol_hash"].first().items()}
            fams.append(Family(ds, fh, f, protocols[f["protocol_hash"].iloc[0]], hashes))
        fams.sort(key=lambda fa: (int(fa.frame["protocol_version"].max()), str(fa.frame["run_created"].max()),
                                  len(fa.frame)), reverse=True)  # stable: equal keys keep the hash order
        out += fams
    return out


def budget_line(p: dict) -> str:
    if "steps" not in p and "max_train_samples" in p:  # protocol v2: the budget is a policy (policy_line)
        line = f"Training (the same for every model): Adam, batch size {p.get('batch_size')}, lr {p.get('lr')}"
        line += "".join(f"; {what} {p[k]}" for k, what in (("latent_dim", "latent size"), ("beta", "β =")) if k in p)
        return line + f"; {p.get('n_train')} training tuples."
    line = (f"Budget (the same for every model): {p.get('steps')} Adam steps of batch size {p.get('batch_size')}, "
            f"lr {p.get('lr')}")
    if "prior_steps" in p:
        line += f"; ShaLa's prior stage {p.get('prior_steps')} steps, lr {p.get('prior_lr')}"
    return line + f"; latent size {p.get('latent_dim')}, β = {p.get('beta')}; {p.get('n_train')} training tuples."


def budget_short(p: dict) -> str:
    """The budget in the page header: steps (protocol v1) or the training-sample cap (v2)."""
    if "steps" not in p and "max_train_samples" in p:
        return f"≤ {p.get('max_train_samples')} training samples (validation plateau stop)"
    return f"{p.get('steps')} steps"


POLICY_KEYS = ("max_train_samples", "eval_every", "patience", "min_delta", "val_n")
SELECTION_KEYS = ("selection", "selection_metric", "val_selection")  # the recipe's name for its selection metric


def selection_of(p: dict, fr: pd.DataFrame) -> str:
    """The validation selection metric: the recipe's, else what the records' stages say they selected on."""
    for k in SELECTION_KEYS:
        if p.get(k):
            return f"`{p[k]}`"
    said = sorted({s for s in fr.get("selection", pd.Series([], dtype=object)).dropna() if s})
    return "; ".join(f"`{s}`" for s in said) if said else "(not recorded)"


def departures_line(p: dict) -> str:
    """Every way a non-`paper` recipe departs from its dataset's `paper` profile (the field's recipe), or ""
    (a `paper` family, a protocol-v1 recipe, or a dataset this installation does not register)."""
    if p.get("profile") == "paper" or p.get("protocol_version", 1) < 2:
        return ""
    from shala_bench.errors import ShalaBenchError
    from shala_bench.protocol import make_protocol
    from shala_bench.registry import get_registry

    try:
        ds = get_registry().get_dataset(p["dataset"])
        paper = make_protocol(ds, "paper").to_dict()
    except (ShalaBenchError, KeyError):
        return ""
    skip = {"profile", "n_modalities", "dataset"}
    diffs = [f"{k} {json.dumps(p[k])} (paper {json.dumps(paper[k])})" for k in sorted(paper)
             if k not in skip and k in p and p[k] != paper[k]]
    if not diffs:
        return ""
    return (f"Departures of this `{p.get('profile')}` recipe from the `paper` profile (the field's recipe for "
            "GPUs; each model's own settings are in the model-config table below): " + "; ".join(diffs) + ".")


def policy_line(p: dict, fr: pd.DataFrame) -> str:
    """The recipe's budget policy (protocol v2), or "" for a recipe without one."""
    if not any(k in p for k in POLICY_KEYS):
        return ""
    g = {k: p.get(k, "?") for k in POLICY_KEYS}
    return (f"Budget policy (the same for every model): each stage is evaluated every {g['eval_every']} training "
            f"samples on {g['val_n']} validation tuples and stops at a plateau — when the validation selection "
            f"metric {selection_of(p, fr)} has not improved by more than min_delta = {g['min_delta']} for patience = "
            f"{g['patience']} evaluations"
            + (f" (a stage selected on its validation loss: by more than min_rel_delta = {p['min_rel_delta']} of "
               "its best loss)" if p.get("min_rel_delta") else "")
            + f" — or at the budget of {g['max_train_samples']} training samples "
            "(max_train_samples), whichever comes first; the best validation checkpoint is the one evaluated.")


def convergence_lines(fr: pd.DataFrame) -> list[str]:
    """Whether the runs of a family converged (a validation plateau before the budget), the runs that did not
    (their rows' cells are marked), or that the family's records do not say."""
    if "converged" not in fr or fr["converged"].isna().all():
        return ["Convergence: not recorded for this family (its records were written before protocol v2 recorded "
                f"`converged`); no cell is marked {UNCONVERGED_MARK}.", ""]
    known = fr[fr["converged"].notna()]
    bad = known[known["converged"] == 0.0]
    unknown = len(fr) - len(known)
    head = (f"Convergence: {len(known) - len(bad)} of {len(known)} records reached a validation plateau within the "
            "budget" + (f"; {unknown} record{'' if unknown == 1 else 's'} did not record it (not marked)"
                        if unknown else ""))
    if bad.empty:
        return [head + ".", ""]
    rows = [[r.entry, str(int(r.M)), str(int(r.seed)),
             "–" if math.isnan(r.run_train_samples) else f"{int(r.run_train_samples)}", r.budget_stages or "–"]
            for r in bad.sort_values(["entry", "M", "seed"]).itertuples()]
    return [head + f"; {len(bad)} did not (listed here; they stay in the means below, whose cells carry "
            f"{UNCONVERGED_MARK}):", "",
            _github(rows, ["model", "M", "seed", "train samples", "stopped at the budget"]), ""]


def grid_lines(fr: pd.DataFrame) -> list[str]:
    """Which (model, M) cells of a family have records, for which seeds, and what one of them cost to train:
    the holes of a grid run in pieces stay visible (a table per M shows only what is there), and anyone can
    plan the rest on their own hardware from measured costs, not estimates."""
    Ms = sorted(int(M) for M in fr["M"].unique())
    rows, filled = [], 0
    for entry, g in fr.groupby("entry", sort=True):
        row = [entry]
        for M in Ms:
            part = g[g["M"] == M]
            if part.empty:
                row.append("–")
                continue
            filled += 1
            seeds = ", ".join(str(int(s)) for s in sorted(part["seed"].unique()))
            h = part["run_train_h"].mean()  # NaN when no seed recorded its timings
            row.append(f"{seeds} · {h:.2f} h" if math.isfinite(h) else seeds)
        rows.append(row)
    return [f"Grid: {filled} of {len(rows) * len(Ms)} (model, M) cells have records — each lists its seeds and "
            "the mean training hours of one seed (`train h`, on the hardware of the compute line); –: no record "
            "yet.", "", _github(rows, ["model", *(f"M = {M}" for M in Ms)]), ""]


def config_lines(fr: pd.DataFrame) -> list[str]:
    """Each row's config hash and settings, where the records carry them (protocol v2)."""
    if "config_hash" not in fr or not (fr["config_hash"] != "").any():
        return []
    rows = []
    for (entry, h), g in fr.groupby(["entry", "config_hash"], sort=True):
        cfg = next((c for c in g["config_json"] if c), "") if "config_json" in g else ""
        settings = (", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in json.loads(cfg).items())
                    if cfg else "–")
        rows.append([entry, f"`{h[:12]}`" if h else "(not recorded)", settings.replace("|", "\\|"),
                     str(len(g))])
    return ["Model configs (the settings of each model alone, as its records give them, and the config hash they "
            "record; records of one model under different configs are different rows, named `model·<config hash>`, "
            "never merged, and ranked with the other rows of their recipe):", "",
            _github(rows, ["model", "config hash", "settings", "records"]), ""]


def compute_line(fr: pd.DataFrame) -> str:
    """What the records cost: summed training and evaluation time, and on what."""
    if "run_train_s" not in fr or fr["run_train_s"].isna().all():
        return ""
    on = ", ".join(f"{n} records on {d}, {t} torch thread{'' if t == 1 else 's'}" for (d, t), n in
                   fr.groupby(["run_device", "run_threads"], sort=True).size().items())
    busy = busy_wall_s(fr)
    reused = fr["run_reused_s"].fillna(0).sum() if "run_reused_s" in fr else 0.0
    shared = (f" (stages reused from another run, {reused / 3600:.1f} h, counted once: the per-cell `train h` "
              "includes them)" if reused > 0 else "")
    return (f"Compute, summed over the {len(fr)} records: {(fr['run_train_s'].sum() - reused) / 3600:.1f} h of "
            f"training{shared} and {fr['run_eval_s'].sum() / 3600:.1f} h of evaluation ({on})"
            + (f"; wall time {busy / 3600:.1f} h — the union of the runs' intervals (each record's end less its "
               "data, training and evaluation seconds), so parallel workers overlap and the pauses between the "
               "pieces of a sweep are not counted" if busy else "") + ".")


def busy_wall_s(fr: pd.DataFrame) -> float:
    """Seconds covered by the union of the records' run intervals [end - (data + train + eval), end]; 0 when the
    records do not say."""
    from datetime import datetime

    spans = []
    for end, wall in zip(fr.get("run_created", []), fr.get("run_wall_s", [])):
        try:
            t1 = datetime.fromisoformat(str(end)).timestamp()
        except ValueError:
            continue
        if isinstance(wall, (int, float)) and math.isfinite(wall) and wall > 0:
            spans.append((t1 - float(wall), t1))
    total, reach = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def _fmt(r, col: str) -> str:
    v = getattr(r, col, math.nan)
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def chance_lines(fr: pd.DataFrame) -> list[str]:
    """Whether every seed left chance and none collapsed, and the seeds that did not (they stay in the means,
    marked)."""
    known = fr[fr["chance_level"].notna()] if "chance_level" in fr else fr.iloc[:0]
    if known.empty:
        return []
    levels = ", ".join(f"{c:.3g}" for c in sorted(known["chance_level"].unique()))
    at_chance = known["at_chance"].astype(bool)
    collapsed_ = known["collapsed"].astype(bool) if "collapsed" in known else at_chance & False
    bad = known[at_chance | collapsed_]
    head = (f"Chance: conditional coherence {levels} (1/C for C classes); a seed is above chance when a one-sided "
            f"binomial test gives p < {CHANCE_P}, and its prior samples are collapsed when their joint agreement is "
            f"not above chance or one class takes more than {MAJORITY_MAX} of a modality's samples (see the legend). ")
    if bad.empty:
        return [head + f"Every seed of every model is above chance ({len(known)} of {len(known)} records)"
                + (", and none is collapsed." if "coherence_joint_chance" in known else "."), ""]
    cond = "coherence_cond_bal_mean" if "coherence_cond_bal_mean" in bad and bad["coherence_cond_bal_mean"].notna().any() \
        else "coherence_cond_mean"
    cols = [c for c in (cond, "coherence_joint", "coherence_joint_kappa", "coherence_joint_majority") if c in bad]
    rows = [[r.entry, str(int(r.M)), str(int(r.seed))] + [_fmt(r, c) for c in cols]
            + [", ".join(w for w, f in (("conditional at chance", r.at_chance),
                                        ("collapsed", getattr(r, "collapsed", False))) if f)]
            for r in bad.sort_values(["entry", "M", "seed"]).itertuples()]
    return [head + f"{len(bad)} of {len(known)} records are not above chance or collapsed; they stay in the means "
            f"below, whose coherence cells carry {CHANCE_MARK}:", "",
            _github(rows, ["model", "M", "seed", *cols, "why"]), ""]


# ----------------------------------------------------------------- validation learning curves (curves.csv)
# The validation column of a learning curve: balanced k = 1 conditional coherence (what polymnist-synth's early
# stopping maximises), else plain k = 1 coherence (older curves), else the selection metric itself.
VAL_COLUMNS = {"val_coherence_cond_bal_k1": "coherence_cond_bal_k1", "val_coherence_cond_k1": "coherence_cond_k1",
               "val_selection": None}


@dataclass
class RunCurve:
    """The evaluations of one run, read from the curves.csv beside its record."""

    entry: str
    seed: int
    converged: float  # 1.0 / 0.0 / NaN, as the frame's column
    total: float  # the training samples of the run (the largest `samples` of its curve)
    points: dict[str, tuple[np.ndarray, np.ndarray]]  # validation column -> (samples, values), by samples
    # validation column -> the training FLOPs at each of its points, and the run's training FLOPs, where its
    # record gives every stage's cost (stage_costs); empty / NaN otherwise
    flops: dict[str, np.ndarray] = field(default_factory=dict)
    total_flops: float = math.nan

    def at_or_before(self, col: str, x: float, axis: str = "samples") -> float | None:
        """The last evaluation at or before `x` training samples (axis "samples") or training FLOPs ("flops");
        None when there is none."""
        xs, ys = self.points[col]
        i = int(np.searchsorted(xs if axis == "samples" else self.flops[col], x, side="right"))
        return float(ys[i - 1]) if i else None


def stage_costs(r: RunRecord) -> dict[str, tuple[float, float, float]]:
    """stage -> (training samples, training FLOPs, FLOPs per training sample), from a record's stage summaries;
    {} when any stage does not say (records before the trainer counted FLOPs per stage)."""
    stages = r.stages if isinstance(getattr(r, "stages", None), dict) else {}
    out = {}
    for name, v in stages.items():
        try:
            n, f, per_step, bs = (float(v[k]) for k in ("samples", "train_flops", "flops_per_step", "batch_size"))
        except (KeyError, TypeError, ValueError):
            return {}
        if not (bs > 0 and all(math.isfinite(x) for x in (n, f, per_step))):
            return {}
        out[name] = (n, f, per_step / bs)
    return out


def flops_at(stages: pd.Series, samples: pd.Series, costs: dict[str, tuple[float, float, float]]) -> np.ndarray:
    """The training FLOPs spent when each curve row was written: the FLOPs of the stages before the row's (in the
    order they appear in the curve) and its stage's FLOPs per sample times its samples into that stage. NaN
    where a row's stage has no cost."""
    order = list(dict.fromkeys(stages.dropna()))
    before_n, before_f, offset = 0.0, 0.0, {}
    for st in order:
        if st not in costs:
            continue
        offset[st] = (before_n, before_f)
        before_n, before_f = before_n + costs[st][0], before_f + costs[st][1]
    out = np.full(len(samples), math.nan)
    for i, (st, n) in enumerate(zip(stages, samples)):
        if st in offset and math.isfinite(n):
            n0, f0 = offset[st]
            out[i] = f0 + (n - n0) * costs[st][2]
    return out


def read_curve(path: Path, warn=None) -> pd.DataFrame | None:
    """A run's curves.csv as a frame; None, quietly, when there is none, or with a warning when it is unreadable or
    has no `samples` column."""
    from shala_bench.results import _warn

    warn = warn or _warn
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        warn(f"skipped {path}: {e}")
        return None
    if "samples" not in df:
        warn(f"skipped {path}: it has no `samples` column")
        return None
    return df


def run_curves(part: pd.DataFrame, root: Path | None) -> list[RunCurve]:
    """The curves of the records in `part` (one protocol), from <root>/<dataset>/<model>/<run_id>/curves.csv."""
    from shala_bench.results import CURVES, run_dir

    if root is None:
        return []
    out = []
    for r in part.itertuples():
        df = read_curve(run_dir(Path(root), r.dataset, r.model, r.run_id) / CURVES)
        if df is None:
            continue
        samples = pd.to_numeric(df["samples"], errors="coerce")
        costs = json.loads(r.stage_costs) if isinstance(getattr(r, "stage_costs", ""), str) and r.stage_costs else {}
        fl = flops_at(df["stage"], samples, costs) if costs and "stage" in df else np.full(len(df), math.nan)
        points, flops = {}, {}
        for col in VAL_COLUMNS:
            if col in df:
                ys = pd.to_numeric(df[col], errors="coerce")
                ok = ys.notna() & samples.notna()
                if ok.any():
                    order = np.argsort(samples[ok].to_numpy(float), kind="stable")
                    points[col] = (samples[ok].to_numpy(float)[order], ys[ok].to_numpy(float)[order])
                    f = fl[ok.to_numpy()][order]
                    if np.isfinite(f).all():
                        flops[col] = f
        if points and samples.notna().any():
            total_flops = sum(c[1] for c in costs.values()) if costs else math.nan
            out.append(RunCurve(r.entry, int(r.seed), float(r.converged), float(samples.max()), points,
                                flops, total_flops))
    return out


def compute_axis(curves: list[RunCurve], col: str) -> str:
    """"flops" when every run with `col` knows its training FLOPs at each evaluation (equal compute is then read
    in FLOPs, which differ per sample by model), else "samples"."""
    runs = [c for c in curves if col in c.points]
    return "flops" if runs and all(col in c.flops and math.isfinite(c.total_flops) for c in runs) else "samples"


def val_column(curves: list[RunCurve]) -> str | None:
    """The validation column most curves have (k = 1 coherence before the selection metric on a tie)."""
    counts = {col: sum(col in c.points for c in curves) for col in VAL_COLUMNS}
    best = max(counts.values(), default=0)
    return next((col for col, n in counts.items() if n == best), None) if best else None


def curve_bands(curves: list[RunCurve], col: str) -> dict[str, tuple[list, list, list, list]]:
    """entry -> (samples, mean, min, max) over its seeds: each seed interpolated linearly between its evaluations
    at every evaluation point of any seed, within the range that seed trained over."""
    out = {}
    for entry in sorted({c.entry for c in curves}):
        seeds = [c.points[col] for c in curves if c.entry == entry and col in c.points]
        grid = sorted({float(x) for xs, _ in seeds for x in xs})
        xs_, mean, lo, hi = [], [], [], []
        for x in grid:
            vals = [float(np.interp(x, xs, ys)) for xs, ys in seeds if xs[0] <= x <= xs[-1]]
            if vals:
                xs_.append(x)
                mean.append(float(np.mean(vals)))
                lo.append(min(vals))
                hi.append(max(vals))
        out[entry] = (xs_, mean, lo, hi)
    return out


def equal_compute(curves: list[RunCurve], col: str, axis: str = "samples") -> tuple[float, dict[str, Cell]]:
    """(s, entry -> Cell): each run's validation `col` at its last evaluation at or before s, the fewest training
    samples (axis "samples") or FLOPs ("flops") any of these runs trained for; a run without an evaluation by then
    is left out."""
    runs = [c for c in curves if col in c.points]
    s = min(c.total if axis == "samples" else c.total_flops for c in runs)
    cells: dict[str, Cell] = {}
    for entry in sorted({c.entry for c in runs}):
        mine = [(c, c.at_or_before(col, s, axis)) for c in runs if c.entry == entry]
        mine = [(c, v) for c, v in mine if v is not None]
        cells[entry] = Cell(tuple(v for _, v in mine), unconverged=sum(c.converged == 0.0 for c, _ in mine))
    return s, cells


def _selection_name(p: dict, fr: pd.DataFrame) -> str | None:
    """The single metric the runs select on, if one (from the recipe, else from the records' stages)."""
    for k in SELECTION_KEYS:
        if isinstance(p.get(k), str) and p[k]:
            return p[k]
    said = {part.split(": ", 1)[-1] for s in fr.get("selection", pd.Series([], dtype=object)).dropna() if s
            for part in s.split(", ")}
    return said.pop() if len(said) == 1 else None


def val_key(col: str, p: dict, fr: pd.DataFrame, catalog: Catalog):
    """The MetricKey (its direction) of a validation column: the test metric it is the validation twin of; for
    the selection metric, the metric the recipe selects on, where an installed metric declares it."""
    name = VAL_COLUMNS.get(col) or _selection_name(p, fr)
    if not name:
        return None
    return catalog.key(name) or (catalog.key(name.removeprefix("val_")) if name.startswith("val_") else None)


def equal_compute_markdown(cells: dict[str, Cell], col: str, key) -> str:
    a = arrow_of(key)
    rows = [[entry, str(c.n), fmt_cell(c)] for entry, c in cells.items()]
    return _github(rows, ["model", "seeds", f"validation {col} {a}".rstrip()])


def _md_image(alt: str, rel: str) -> str:
    return f"![{alt}]({rel})"


def family_section(fam: Family, out: Path, plots_rel: str, written: list[Path],
                   catalog: Catalog | None = None, curves_root: Path | None = None,
                   records_rel: str = "records") -> list[str]:
    """A protocol family's section: its recipe, compute, convergence and configs; the modality-scaling curves;
    per M the leaderboard, the sample grids copied beside the records (under `curves_root`, linked through
    `records_rel`) and, where the runs left a curves.csv beside their records, the
    validation learning curves and the ranking at equal training compute."""
    from shala_bench.plots import band_plot, line_plot

    catalog = catalog or Catalog()
    p, short = fam.protocol, fam.family_hash[:12]
    profile, version = fam.frame["profile"].iloc[0], int(fam.frame["protocol_version"].iloc[0])
    versions = fam.frame["metric_versions"].iloc[0] if "metric_versions" in fam.frame else ""
    models = sorted(fam.frame["entry"].unique())
    compute, policy, departs = compute_line(fam.frame), policy_line(p, fam.frame), departures_line(p)
    lines = [f"## Profile `{profile}`, protocol v{version}, family `{short}`", "", budget_line(p), "",
             *([policy, ""] if policy else []), *([departs, ""] if departs else []),
             f"Metric versions: {versions} (every other metric v1)." if versions else
             "Metric versions: every metric v1.", "",
             *([compute, ""] if compute else []),
             "Protocol hash per number of modalities M (the family hash is the hash of the protocol without "
             "`n_modalities`, and of the metric versions):", ""]
    rows = []
    for M, h in fam.hashes.items():
        part = fam.frame[fam.frame["M"] == M]
        rows.append([str(M), f"`{h[:12]}`", str(part["model"].nunique()), str(len(part))])
    lines += [_github(rows, ["M", "protocol hash", "models", "records"]), ""]
    lines += convergence_lines(fam.frame)
    lines += grid_lines(fam.frame)
    lines += config_lines(fam.frame)
    lines += chance_lines(fam.frame)

    levels = fam.frame["chance_level"].dropna().unique() if "chance_level" in fam.frame else []
    chance = float(levels[0]) if len(levels) == 1 else None  # of conditional coherence; joint's depends on M

    def plot(cv: Curve, name: str, ylabel: str, what: str) -> str:
        path = out / plots_rel / f"{short}-{name}.png"
        conditional = cv.key is not None and cv.key.chance == "conditional"
        line_plot(path, cv.series(), xlabel=cv.xlabel, ylabel=ylabel, title=plot_title(cv, what), models=models,
                  xticks=cv.xs, chance=chance if conditional else None)
        written.append(path)
        return _md_image(what, f"{plots_rel}/{path.name}")

    curves, kc = scaling_curves(fam.frame, catalog), k_curve(fam.frame, catalog)
    tables = frame_tables(fam.frame, catalog=catalog)
    shown = {cv.metric: cv.key for cv in curves}
    shown.update(_union_keys(tables))
    if shown:
        lines += [columns_legend(shown), ""]
    if any(t.compute for t in tables):
        lines += [COMPUTE_NOTE, ""]
    if curves or kc:
        lines += ["### Modality scaling", ""]
    for cv in curves:
        a = arrow_of(cv.key)
        label = f"{cv.metric} {a}" if a else cv.metric
        what = f"{label} vs M"
        lines += [f"#### {what}", "", plot(cv, f"{cv.metric}-vs-M", label, what), "", curve_markdown(cv, "M"), ""]
    if kc:
        M, cv = kc
        name = k_curve_name(cv)
        what = f"{name} ↑ vs k at M = {M}"
        lines += [f"#### {name[0].upper() + name[1:]} vs the number of given modalities k (M = {M}, protocol "
                  f"`{fam.hashes[M][:12]}`)", "",
                  plot(cv, f"{cv.metric}-vs-k-M{M}", f"{name} ↑", what), "",
                  "The numbers: the per-k table in the section of each M below.", ""]

    def per_k(part: pd.DataFrame) -> list[str]:
        """The conditional coherence at every k of one M (at M = 2 the only k is the headline's k = 1)."""
        got = k_curve(part, catalog)
        if got is None or len(got[1].xs) < 2:
            return []
        M, cv = got
        name = k_curve_name(cv)
        return [f"{name[0].upper() + name[1:]} per number of given modalities k (M = {M}; `{cv.metric}_k<k>`):", "",
                curve_markdown(cv, "k"), ""]

    def learning(M: int) -> list[str]:
        part = fam.frame[fam.frame["M"] == M]
        runs = run_curves(part, curves_root)
        col = val_column(runs)
        if col is None:
            return []
        key = val_key(col, p, fam.frame, catalog)
        a = arrow_of(key)
        path = out / plots_rel / f"{short}-{col}-vs-samples-M{M}.png"
        what = f"validation {col} vs training samples at M = {M}"
        axis = compute_axis(runs, col)
        s, cells = equal_compute(runs, col, axis)
        band_plot(path, curve_bands(runs, col), xlabel="training samples", ylabel=f"validation {col} {a}".rstrip(),
                  title=(f"{fam.dataset}, M = {M}: validation learning curve (mean, min–max over seeds)\n"
                         f"profile {profile}, protocol v{version}, family {short}"),
                  models=models, chance=chance if VAL_COLUMNS[col] else None, marker=".",
                  xline=(s, "equal compute") if axis == "samples" else None)
        written.append(path)
        if _lower(key) is not None:
            rank(cells, _lower(key))
        with_col = sum(col in c.points for c in runs)
        return [f"Validation learning curve (M = {M}): validation `{col}` against the training samples of the run, "
                f"from the `curves.csv` beside each record ({with_col} of {len(part)} records have one): the mean "
                "over seeds, each seed interpolated linearly between its evaluations within the range it trained "
                "over, and the band from the lowest to the highest seed.", "",
                _md_image(what, f"{plots_rel}/{path.name}"), "",
                (f"At equal training compute (M = {M}): validation `{col}` at {int(s)} training samples, the fewest "
                 "any of these runs trained for — each run's last evaluation at or before it (a run not yet "
                 "evaluated by then is left out). The table above ranks the selected checkpoints, each after its "
                 "own training; this one, the runs after the same number of training samples."
                 if axis == "samples" else
                 f"At equal training compute (M = {M}): validation `{col}` after {s / 1e15:.3g} PFLOP of training, "
                 "the least any of these runs spent — each run's last evaluation at or before it, its FLOPs read "
                 "from its record's per-stage counts (a run not yet evaluated by then is left out). The table above "
                 "ranks the selected checkpoints, each after its own training; this one, the runs after the same "
                 "training compute, whose FLOPs per sample differ by model."), "",
                equal_compute_markdown(cells, col, key), ""]

    lines += ["### Leaderboard per M", ""]
    for t in tables:
        part = fam.frame[(fam.frame["M"] == t.M) & (fam.frame["protocol_hash"] == t.protocol_hash)]
        lines += [f"#### M = {t.M} — protocol `{t.protocol_hash[:12]}`", "", table_markdown(t, p), ""]
        lines += per_k(part)
        lines += learning(t.M)
        lines += sample_grid_lines(part, t.M, curves_root, records_rel)
    return lines


def dataset_page(ds: str, fams: list[Family], failed: list[RunRecord], out: Path, records_rel: str,
                 written: list[Path], catalog: Catalog | None = None, curves_root: Path | None = None) -> str:
    lines = [f"# Leaderboard: {ds}", "",
             f"Generated by `shala-bench leaderboard` from the run records in [`{records_rel}/`]({records_rel}/) "
             "only; do not edit by hand.", ""]
    for fam in fams:  # the header: each profile, its budget and its protocol hashes
        fr = fam.frame
        hashes = ", ".join(f"M = {M} `{h[:12]}`" for M, h in fam.hashes.items())
        lines.append(f"- Profile `{fr['profile'].iloc[0]}`, protocol v{int(fr['protocol_version'].iloc[0])}, family "
                     f"`{fam.family_hash[:12]}`: {budget_short(fam.protocol)}, batch size "
                     f"{fam.protocol.get('batch_size')}, lr {fam.protocol.get('lr')}; {_count(fr['model'].nunique(), 'model')}, "
                     f"{_count(fr['seed'].nunique(), 'seed')}; protocol hashes {hashes}.")
    convergence = any(fam.frame["converged"].notna().any() for fam in fams if "converged" in fam.frame)
    lines += ["", legend(convergence), ""]
    for fam in fams:
        lines += family_section(fam, out, f"plots/{ds}", written, catalog, curves_root, records_rel)
    if failed:
        lines += ["## Failed runs", "", "Recorded, not shown in the tables above.", ""]
        rows = [[r.model, str(r.seed), str(r.n_modalities), f"`{r.protocol_hash[:12]}`", r.status]
                for r in sorted(failed, key=lambda r: (r.model, r.n_modalities, r.seed, r.protocol_hash))]
        lines += [_github(rows, ["model", "seed", "M", "protocol hash", "status"]), ""]
    return "\n".join(lines)


def index_page(fams: list[Family], records_rel: str) -> str:
    lines = ["# Leaderboards", "",
             f"Generated by `shala-bench leaderboard` from the run records in [`{records_rel}/`]({records_rel}/) "
             "only; do not edit by hand. Regenerate with `shala-bench leaderboard`; add records with "
             "`shala-bench leaderboard --collect RESULTS`.", "",
             "A protocol family is one protocol with every number of modalities M: its hash is the hash of the "
             "protocol without `n_modalities`.", ""]
    rows = []
    for f in fams:
        fr = f.frame
        rows.append([f"[{f.dataset}]({f.dataset}.md)", f"`{fr['profile'].iloc[0]}`",
                     f"v{int(fr['protocol_version'].iloc[0])}", f"`{f.family_hash[:12]}`",
                     ", ".join(str(M) for M in f.hashes), str(fr["model"].nunique()), str(fr["seed"].nunique()),
                     str(len(fr))])
    if rows:
        lines += [_github(rows, ["dataset", "profile", "protocol", "family hash", "M", "models", "seeds", "records"]), ""]
    else:
        lines += ["No records yet.", ""]
    return "\n".join(lines)


def _relpath(target: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def write_leaderboards(records: list[RunRecord], out_dir: Path, dataset: str | None = None,
                       records_dir: Path | None = None, registry=None) -> list[Path]:
    """Write <out>/<dataset>.md (+ plots/<dataset>/*.png) for each dataset, and <out>/README.md.

    The validation learning curves come from the curves.csv beside each record under `records_dir`
    (<dataset>/<model>/<run_id>/), where there is one; without `records_dir`, none are drawn.

    Deterministic: sorted order, no timestamps, PNGs without software/time metadata. Stale PNGs
    under <out>/plots/<dataset>/ from earlier runs are removed. With `dataset`, only that page
    (and the index, which always lists every dataset of `records`).
    """
    out = Path(out_dir)
    records_rel = _relpath(records_dir, out) if records_dir else "records"
    df = records_frame(records)
    protocols = {r.protocol_hash: r.protocol for r in records if r.ok}
    fams = families(df, protocols) if not df.empty else []
    catalog = Catalog(registry)
    written: list[Path] = []
    datasets = sorted({r.dataset for r in records})
    for ds in datasets:
        if dataset and ds != dataset:
            continue
        plots: list[Path] = []
        failed = [r for r in records if r.dataset == ds and not r.ok and r.status != "running"]
        text = dataset_page(ds, [f for f in fams if f.dataset == ds], failed, out, records_rel, plots, catalog,
                            records_dir)
        for stale in sorted((out / "plots" / ds).glob("*.png")):
            if stale not in plots:
                stale.unlink()
        path = out / f"{ds}.md"
        atomic_write_text(path, text)
        written += plots + [path]
    index = out / "README.md"
    atomic_write_text(index, index_page(fams, records_rel))
    return written + [index]


# ----------------------------------------------------------------- collecting records
def _copy_if_changed(src: Path, dest: Path) -> bool:
    """Copy src to dest atomically unless dest already holds the same bytes; whether it copied."""
    if dest.exists() and dest.read_bytes() == src.read_bytes():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-collect")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    return True


def collect_records(results: Path, records_dir: Path) -> tuple[list[Path], list[Path]]:
    """Copy finished record.json files (ok and failed, not running) from a results folder into
    <records_dir>/<dataset>/<model>/<run_id>/record.json, each with the curves.csv (the leaderboard's validation
    learning curves) and the sample grids beside it where it has them. Returns (copied, unchanged) records."""
    from shala_bench.results import CURVES, iter_record_files

    copied, same = [], []
    for path, rec in iter_record_files(Path(results)):  # unreadable or inconsistent ones: skipped, with a warning
        if rec.status == "running":
            continue
        dest = Path(records_dir) / rec.dataset / rec.model / rec.run_id / RECORD
        if (path.parent / CURVES).is_file():
            _copy_if_changed(path.parent / CURVES, dest.parent / CURVES)
        copy_grids(path.parent, dest.parent, rec.artifacts, _copy_if_changed)
        (copied if _copy_if_changed(path, dest) else same).append(dest)
    return copied, same
