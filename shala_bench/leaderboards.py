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

from shala_bench.results import RECORD, RunRecord, atomic_write_text

# Columns of a per-M table by default, in order (those present in the records); more with --metric.
DEFAULT_METRICS = ["coherence_joint_kappa", "coherence_joint", "coherence_cond_bal_mean", "coherence_cond_mean",
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
META = ["dataset", "model", "seed", "M", "profile", "protocol_version", "protocol_hash", "metric_versions",
        "family_hash", "chance_level", "at_chance", "collapsed", "run_train_s", "run_eval_s", "run_device",
        "run_threads"]
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
    # One record per (dataset, model, protocol, seed): the latest (a re-evaluation supersedes the first).
    latest: dict[tuple, RunRecord] = {}
    for r in sorted((r for r in records if r.ok), key=lambda r: (r.created, r.run_id)):
        latest[(r.dataset, r.model, r.protocol_hash, r.seed)] = r
    # one registry lookup per dataset, and none when every record carries its chance level
    registered = registered_chances({r.dataset for r in latest.values() if "coherence_cond_chance" not in r.metrics})
    for r in latest.values():
        versions = canonical_versions(r.metrics.get(VERSIONS_KEY))
        row = {"dataset": r.dataset, "model": r.model, "seed": r.seed, "M": r.n_modalities, "profile": r.profile,
               "protocol_version": r.protocol.get("protocol_version", 0), "protocol_hash": r.protocol_hash,
               "metric_versions": versions_label(versions), "family_hash": family_hash(r.protocol, versions)}
        row["chance_level"], row["at_chance"] = _chance_of(r, registered)
        row["collapsed"] = collapsed(r)
        row["run_train_s"], row["run_eval_s"] = (float(r.timings.get(k) or math.nan) for k in ("train_s", "eval_s"))
        row["run_device"], row["run_threads"] = r.hardware.get("device", "?"), r.hardware.get("torch_threads", "?")
        row.update({k: float(v) for k, v in r.metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        row.update(_kmax(r.metrics, r.n_modalities))
        # The name of the bound behind a bound-valued metric (test_nll -> test_nll_bound = "elbo", ...).
        row.update({k: v for k, v in r.metrics.items() if k.endswith(BOUND_SUFFIX) and isinstance(v, str)})
        rows.append(row)
    df = pd.DataFrame(rows, columns=META if not rows else None)
    return df.sort_values(["dataset", "model", "M", "seed", "protocol_hash", "metric_versions"],
                          kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------- statistics
@dataclass
class Cell:
    """Summary of one metric of one model over its seeds."""

    values: tuple[float, ...]
    best: bool = False
    significant: bool = False  # the best, and beyond seed noise vs the runner-up
    bound: str = ""  # for a bound-valued metric: the name of the bound, ranked only against the same bound
    at_chance: int = 0  # coherence metrics: seeds whose conditional coherence is not above chance

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
    """Mark the best cell(s) (ties share it) and whether the best beats the runner-up beyond seed noise."""
    scored = {k: c for k, c in cells.items() if c.n}
    if len(scored) < 2:
        return
    sign = 1.0 if lower else -1.0
    order = sorted(scored, key=lambda k: (sign * scored[k].mean, k))
    top = sign * scored[order[0]].mean
    best = [k for k in order if sign * scored[k].mean == top]
    for k in best:
        scored[k].best = True
    if len(best) == 1:
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
    rows: dict[str, tuple[int, dict[str, Cell]]] = field(default_factory=dict)  # model -> (seeds, {metric: Cell})
    n_records: int = 0
    metric_versions: str = ""  # metrics not at version 1, e.g. "coherence_joint v2"
    keys: dict = field(default_factory=dict)  # metric -> its MetricKey (None: no installed metric declares it)

    def lower(self, metric: str) -> bool | None:
        return _lower(self.keys.get(metric))

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "M": self.M, "protocol_hash": self.protocol_hash, "profile": self.profile,
                "protocol_version": self.protocol_version, "metric_versions": self.metric_versions,
                "family_hash": self.family_hash,
                "rows": [{"model": model, "seeds": seeds,
                          "metrics": {m: {"mean": _num(c.mean), "std": _num(c.std), "n": c.n, "best": c.best,
                                          "significant": c.significant, "lower_is_better": self.lower(m),
                                          "seeds_at_chance": c.at_chance, **({"bound": c.bound} if c.bound else {})}
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
              metric_versions=first.get("metric_versions", "") or "", keys={m: catalog.key(m) for m in metrics})
    for model, g in part.groupby("model", sort=True):
        cells = {m: metric_cell(g, m, t.keys[m]) for m in metrics}
        for m, c in cells.items():
            if m + BOUND_SUFFIX in g and c.n:
                c.bound = ",".join(sorted(g[m + BOUND_SUFFIX].dropna().unique()))
        t.rows[model] = (int(g["seed"].nunique()), cells)
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


def fmt_cell(c: Cell) -> str:
    if not c.n:
        return "–"
    d = decimals_for(c.mean)
    s = fmt_value(c.mean, d) if c.n < 2 else f"{fmt_value(c.mean, d)} ± {fmt_value(c.std, d)}"
    if c.best:
        s = f"**{s}**"
    s += SIG_MARK if c.significant else ""
    s += CHANCE_MARK if c.at_chance else ""
    return f"{s} ({c.bound})" if c.bound else s


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
    rows = [[model, str(seeds)] + [fmt_cell(cells[m]) for m in t.metrics] for model, (seeds, cells) in t.rows.items()]
    md = _github(rows, ["model", "seeds"] + [metric_header(m, t.profile, t.keys.get(m)) for m in t.metrics])
    if any(quick_fid(t.keys.get(m), t.profile) for m in t.metrics):
        md += "\n\n" + quick_fid_note(t.profile, protocol)
    return md


def table_title(t: Table) -> str:
    versions = f", metrics {t.metric_versions}" if t.metric_versions else ""
    return (f"{t.dataset} — M = {t.M} — profile `{t.profile}`, protocol v{t.protocol_version} "
            f"`{t.protocol_hash[:12]}`{versions}")


def compare_markdown(tables: list[Table], protocols: dict[str, dict] | None = None) -> str:
    columns = columns_legend(_union_keys(tables))
    parts = [LEGEND, "", *([columns, ""] if columns else [])]
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
                             "seeds_at_chance": c.at_chance, "bound": c.bound})
    cols = ["dataset", "M", "protocol_hash", "profile", "protocol_version", "metric_versions", "family_hash", "model",
            "seeds", "metric", "mean", "std", "n", "best", "significant", "lower_is_better", "seeds_at_chance", "bound"]
    return pd.DataFrame(rows, columns=cols).to_csv(index=False, float_format="%.6g", lineterminator="\n")


def compare_json(tables: list[Table]) -> str:
    columns = {m: {"direction": k.direction if k else None, "description": k.description if k else None}
               for m, k in _union_keys(tables).items()}
    return json.dumps({"legend": LEGEND, "columns": columns, "tables": [t.to_dict() for t in tables]}, indent=2,
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
                 for model, g in fam.groupby("model", sort=True)}
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
                 for model, g in part.groupby("model", sort=True)}
        first = part.iloc[0]
        name = next(iter(ks.values())).rsplit("_k", 1)[0]  # coherence_cond_bal or coherence_cond
        cv = Curve(first["dataset"], first["family_hash"], first["profile"], int(first["protocol_version"]),
                   name, "number of given modalities k", list(ks), cells, key)
        return int(M), _rank_curve(cv)
    return None


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


def families(df: pd.DataFrame, protocols: dict[str, dict]) -> list[Family]:
    """Protocol families of each dataset, the one with most records first (ties: by hash)."""
    out = []
    for ds, d in df.groupby("dataset", sort=True):
        fams = []
        for fh, f in d.groupby("family_hash", sort=True):
            hashes = {int(M): h for M, h in f.groupby("M", sort=True)["protocol_hash"].first().items()}
            fams.append(Family(ds, fh, f, protocols[f["protocol_hash"].iloc[0]], hashes))
        fams.sort(key=lambda fa: -len(fa.frame))
        out += fams
    return out


def budget_line(p: dict) -> str:
    line = (f"Budget (the same for every model): {p.get('steps')} Adam steps of batch size {p.get('batch_size')}, "
            f"lr {p.get('lr')}")
    if "prior_steps" in p:
        line += f"; ShaLa's prior stage {p.get('prior_steps')} steps, lr {p.get('prior_lr')}"
    return line + f"; latent size {p.get('latent_dim')}, β = {p.get('beta')}; {p.get('n_train')} training tuples."


def compute_line(fr: pd.DataFrame) -> str:
    """What the records cost: summed training and evaluation time, and on what."""
    if "run_train_s" not in fr or fr["run_train_s"].isna().all():
        return ""
    on = ", ".join(f"{n} records on {d}, {t} torch thread{'' if t == 1 else 's'}" for (d, t), n in
                   fr.groupby(["run_device", "run_threads"], sort=True).size().items())
    return (f"Compute, summed over the {len(fr)} records: {fr['run_train_s'].sum() / 3600:.1f} h of training and "
            f"{fr['run_eval_s'].sum() / 3600:.1f} h of evaluation ({on}); a sweep's wall time is this over its "
            "parallel workers.")


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
    rows = [[r.model, str(int(r.M)), str(int(r.seed))] + [_fmt(r, c) for c in cols]
            + [", ".join(w for w, f in (("conditional at chance", r.at_chance),
                                        ("collapsed", getattr(r, "collapsed", False))) if f)]
            for r in bad.sort_values(["model", "M", "seed"]).itertuples()]
    return [head + f"{len(bad)} of {len(known)} records are not above chance or collapsed; they stay in the means "
            f"below, whose coherence cells carry {CHANCE_MARK}:", "",
            _github(rows, ["model", "M", "seed", *cols, "why"]), ""]


def _md_image(alt: str, rel: str) -> str:
    return f"![{alt}]({rel})"


def family_section(fam: Family, out: Path, plots_rel: str, written: list[Path],
                   catalog: Catalog | None = None) -> list[str]:
    from shala_bench.plots import line_plot

    catalog = catalog or Catalog()
    p, short = fam.protocol, fam.family_hash[:12]
    profile, version = fam.frame["profile"].iloc[0], int(fam.frame["protocol_version"].iloc[0])
    versions = fam.frame["metric_versions"].iloc[0] if "metric_versions" in fam.frame else ""
    models = sorted(fam.frame["model"].unique())
    compute = compute_line(fam.frame)
    lines = [f"## Profile `{profile}`, protocol v{version}, family `{short}`", "", budget_line(p), "",
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
    if curves or kc:
        lines += ["### Modality scaling", ""]
    for cv in curves:
        a = arrow_of(cv.key)
        label = f"{cv.metric} {a}" if a else cv.metric
        what = f"{label} vs M"
        lines += [f"#### {what}", "", plot(cv, f"{cv.metric}-vs-M", label, what), "", curve_markdown(cv, "M"), ""]
    if kc:
        M, cv = kc
        name = ("balanced " if cv.metric.endswith("_bal") else "") + "conditional coherence"
        what = f"{name} ↑ vs k at M = {M}"
        lines += [f"#### {name[0].upper() + name[1:]} vs the number of given modalities k (M = {M}, protocol "
                  f"`{fam.hashes[M][:12]}`)", "",
                  plot(cv, f"{cv.metric}-vs-k-M{M}", f"{name} ↑", what), "",
                  curve_markdown(cv, "k"), ""]

    lines += ["### Leaderboard per M", ""]
    for t in tables:
        lines += [f"#### M = {t.M} — protocol `{t.protocol_hash[:12]}`", "", table_markdown(t, p), ""]
    return lines


def dataset_page(ds: str, fams: list[Family], failed: list[RunRecord], out: Path, records_rel: str,
                 written: list[Path], catalog: Catalog | None = None) -> str:
    lines = [f"# Leaderboard: {ds}", "",
             f"Generated by `shala-bench leaderboard` from the run records in [`{records_rel}/`]({records_rel}/) "
             "only; do not edit by hand.", ""]
    for fam in fams:  # the header: each profile, its budget and its protocol hashes
        fr = fam.frame
        hashes = ", ".join(f"M = {M} `{h[:12]}`" for M, h in fam.hashes.items())
        lines.append(f"- Profile `{fr['profile'].iloc[0]}`, protocol v{int(fr['protocol_version'].iloc[0])}, family "
                     f"`{fam.family_hash[:12]}`: {fam.protocol.get('steps')} steps, batch size "
                     f"{fam.protocol.get('batch_size')}, lr {fam.protocol.get('lr')}; {fr['model'].nunique()} models, "
                     f"{fr['seed'].nunique()} seeds; protocol hashes {hashes}.")
    lines += ["", LEGEND, ""]
    for fam in fams:
        lines += family_section(fam, out, f"plots/{ds}", written, catalog)
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
        text = dataset_page(ds, [f for f in fams if f.dataset == ds], failed, out, records_rel, plots, catalog)
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
def collect_records(results: Path, records_dir: Path) -> tuple[list[Path], list[Path]]:
    """Copy finished record.json files (ok and failed, not running) from a results folder into
    <records_dir>/<dataset>/<model>/<run_id>/record.json. Returns (copied, unchanged)."""
    from shala_bench.results import iter_record_files

    copied, same = [], []
    for path, rec in iter_record_files(Path(results)):  # unreadable or inconsistent ones: skipped, with a warning
        if rec.status == "running":
            continue
        dest = Path(records_dir) / rec.dataset / rec.model / rec.run_id / RECORD
        if dest.exists() and dest.read_bytes() == path.read_bytes():
            same.append(dest)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{RECORD}.tmp-collect")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
        copied.append(dest)
    return copied, same
