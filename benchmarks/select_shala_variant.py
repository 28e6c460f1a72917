"""Which ShaLa variant `shala` stands for, chosen on the VALIDATION split only (issue 16).

Two steps. Test-split numbers are never read by either.

1. `evaluate`: re-evaluate finished training runs of the variants on the validation split, once per
   point of a grid of evaluation settings (the guidance scale of shala-fused / shala-cond, the
   posterior-sampling weight, steps and correctors of shala-post), one validation record each:

       python benchmarks/select_shala_variant.py evaluate --runs runs --out runs-val \\
           --grid guidance_scale=1,2,3 --grid post_weight=0.05,0.2,1 --grid post_langevin=0,2

   Grid keys are the variants' own evaluation settings (the fields their config classes flag as
   evaluation settings, e.g. `guidance_scale`, `post_weight`; `shala-bench config --model shala-post`
   lists them). A grid key applies only to the variants that read it (READS below); every trained
   setting stays the run's (its recipe, and its recorded model config), the other evaluation settings
   are the profile's defaults. The validation split is evaluated in the place of the test split, with a cache folder
   of its own (`--cache-dir`, default <out>/.cache): the harness caches real-data statistics by split
   name, so sharing its cache would mix the two splits. A grid point whose validation record is in --out
   already is kept, not evaluated again: run the step right after each training run finishes (the
   checkpoints live only in the results folder) and commit the records; later calls add the new runs.

2. `select`: read the validation records and pick (prints a table; `--json` writes the decision):

       python benchmarks/select_shala_variant.py select --records runs-val [--json choice.json]

   The rule, in order:
   - score(variant, setting) = k = 1 conditional coherence (`coherence_cond_k1`, mean over seeds)
     averaged over M in --ms (default 2, 5, 8); a candidate missing any M is out.
   - guard rails against the incumbent (shala-fused at its own best setting by the same score), at
     every M: joint coherence κ (`coherence_joint_kappa`) at least the incumbent's minus
     --max-kappa-drop (0.05), and in-domain FD (`fd_mean`) at most --max-fd-ratio (1.25) times the
     incumbent's. A candidate without those metrics is out.
   - a candidate is (variant, training recipe, trained settings, evaluation setting); each variant keeps its best
     candidate that passes the guard rails; the winner is the variant
     with the highest score; a tie (within --min-gain, default 0) keeps the incumbent.
   The decision names the variant and its setting: set `SHALA_VARIANT` in plugins/shala.py and
   that setting as the default of `shala`'s own config (ShaLaChosenConfig: the variant's own default
   stays, so its records keep their meaning), and say both in the `shala` card.

A validation record (`validation.json`) is one JSON object: kind "shala-validation", split "val",
model, n_modalities, seed, settings (the grid point), recipe (the run's trained recipe settings but
n_modalities: candidates never mix recipes), trained (the run's trained settings that differ from its profile's: recipe settings that differ from the profile's recipe, and fields of the recorded model
config that differ from the model's resolved defaults under the run's recipe; runs of one variant with
different trained settings are different candidates), metrics, protocol_hash (of the evaluation recipe),
config and config_hash (the model config it was evaluated with), timings, source_run (the training run's
folder), created. Only the metrics the rule reads
are computed (METRICS).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

KIND = "shala-validation"
VALIDATION = "validation.json"
INCUMBENT = "shala-fused"
VARIANTS = ("shala-fused", "shala-cond", "shala-post")
# which of its config's evaluation settings each variant's sampling reads (a grid key is applied only where it is
# read: shala-post's config inherits guidance_scale, which its unconditional prior never reads)
READS = {
    "shala-fused": {"guidance_scale", "sample_steps", "ddim_eta"},
    "shala-cond": {"guidance_scale", "sample_steps", "ddim_eta"},
    "shala-post": {"sample_steps", "ddim_eta", "post_weight", "post_steps", "post_langevin", "post_snr"},
}
SCORE, KAPPA, FD = "coherence_cond_k1", "coherence_joint_kappa", "fd_mean"
# the metrics the rule reads (the probe, grids, test bound and FID are skipped: for shala-post the probe
# alone would cost another posterior-sampling pass per modality)
METRICS = ("classifier_accuracy", "coherence_conditional", "coherence_joint", "frechet")


class SelectionError(RuntimeError):
    """Bad input to the selection (no records, a record that is not a validation record)."""


# ---------------------------------------------------------------- step 2: select
@dataclasses.dataclass
class Candidate:
    model: str
    settings: dict  # the evaluation grid point
    trained: dict  # the runs' trained settings that differ from the profile's (e.g. shala-cond's modality_dropout)
    per_m: dict  # M -> {"score", "kappa", "fd", "seeds"}
    recipe: dict = dataclasses.field(default_factory=dict)  # the runs' whole trained recipe (but n_modalities)
    score: float | None = None
    eligible: bool = True
    reason: str = ""


def settings_key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def read_validation_records(folder: Path) -> list[dict]:
    folder = Path(folder)
    if not folder.exists():
        raise SelectionError(f"no folder {folder}")
    out = []
    for path in sorted(folder.rglob(VALIDATION)):
        rec = json.loads(path.read_text())
        if rec.get("kind") != KIND or rec.get("split") != "val":
            raise SelectionError(f"{path} is not a validation record (kind {rec.get('kind')!r}, split "
                                 f"{rec.get('split')!r}): selection reads validation numbers only")
        out.append(rec)
    if not out:
        raise SelectionError(f"no {VALIDATION} records under {folder} (run the `evaluate` step first)")
    return out


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def candidates(records: list[dict], ms: tuple[int, ...]) -> list[Candidate]:
    # runs of one variant trained under other recipes are other candidates: keyed on the whole trained recipe
    # (`recipe`), since `trained` is relative to the profile when the record was written, and a profile changes
    groups: dict[tuple[str, str, str, str], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["model"] in VARIANTS:
            if "recipe" not in r:
                raise SelectionError(f"a validation record of {r['model']} (M = {r['n_modalities']}, seed {r['seed']}) "
                                     "does not name its training recipe (`recipe`): it was written before records did; "
                                     "evaluate its run again")
            key = (r["model"], settings_key(r["recipe"]), settings_key(r.get("trained", {})),
                   settings_key(r.get("settings", {})))
            groups[key][int(r["n_modalities"])].append(r["metrics"])
    out = []
    for (model, rkey, tkey, skey), by_m in sorted(groups.items()):
        per_m = {M: {"score": mean([m.get(SCORE) for m in mets]), "kappa": mean([m.get(KAPPA) for m in mets]),
                     "fd": mean([m.get(FD) for m in mets]), "seeds": len(mets)} for M, mets in sorted(by_m.items())}
        c = Candidate(model, json.loads(skey), json.loads(tkey), per_m, recipe=json.loads(rkey))
        missing = [M for M in ms if M not in per_m or per_m[M]["score"] is None]
        if missing:
            c.eligible, c.reason = False, f"no validation {SCORE} at M = {', '.join(map(str, missing))}"
        else:
            c.score = sum(per_m[M]["score"] for M in ms) / len(ms)
        out.append(c)
    return out


def select(records: list[dict], ms: tuple[int, ...] = (2, 5, 8), max_kappa_drop: float = 0.05,
           max_fd_ratio: float = 1.25, min_gain: float = 0.0) -> dict:
    """The decision: {"variant", "settings", "score", "incumbent", "candidates": [...]} (see the module doc)."""
    cands = candidates(records, ms)
    inc = [c for c in cands if c.model == INCUMBENT and c.score is not None]
    if not inc:
        raise SelectionError(f"no complete validation records of the incumbent {INCUMBENT} at M = {ms}: "
                             "the guard rails are measured against it")
    ref = max(inc, key=lambda c: c.score)
    for c in cands:
        if not c.eligible or c is ref:
            continue
        for M in ms:
            mine, theirs = c.per_m[M], ref.per_m[M]
            if mine["kappa"] is None or mine["fd"] is None or theirs["kappa"] is None or theirs["fd"] is None:
                c.eligible, c.reason = False, f"no {KAPPA} or {FD} at M = {M}"
                break
            if mine["kappa"] < theirs["kappa"] - max_kappa_drop:
                c.eligible, c.reason = False, (f"joint κ {mine['kappa']:.3f} < incumbent's {theirs['kappa']:.3f} − "
                                               f"{max_kappa_drop} at M = {M}")
                break
            if mine["fd"] > max_fd_ratio * theirs["fd"]:
                c.eligible, c.reason = False, f"FD {mine['fd']:.3g} > {max_fd_ratio} × incumbent's {theirs['fd']:.3g} at M = {M}"
                break
    best: dict[str, Candidate] = {}
    for c in cands:
        if c.eligible and (c.model not in best or c.score > best[c.model].score):
            best[c.model] = c
    winner = best[INCUMBENT]  # the incumbent's best is `ref`, eligible by definition
    for model, c in sorted(best.items()):
        if c.score > winner.score + min_gain:
            winner = c
    return {"variant": winner.model, "settings": winner.settings, "trained": winner.trained, "recipe": winner.recipe,
            "score": winner.score,
            "ms": list(ms), "incumbent": {"settings": ref.settings, "trained": ref.trained, "score": ref.score},
            "rule": {"score": f"mean over M of {SCORE}", "max_kappa_drop": max_kappa_drop, "max_fd_ratio": max_fd_ratio,
                     "min_gain": min_gain},
            "candidates": [{"model": c.model, "settings": c.settings, "trained": c.trained, "recipe": c.recipe,
                            "score": c.score, "eligible": c.eligible,
                            "best_of_variant": best.get(c.model) is c, "reason": c.reason,
                            "per_m": {str(M): v for M, v in c.per_m.items()}} for c in cands]}


def table(decision: dict) -> str:
    ms = decision["ms"]
    # the recipe column names the recipe settings in which the candidates' recipes differ ("–": all alike)
    recipes = [c["recipe"] for c in decision["candidates"]]
    varying = sorted({k for r in recipes for k in r if any(o.get(k) != r.get(k) for o in recipes)})
    lines = ["| variant | recipe | settings | score | " + " | ".join(f"k1/κ/FD M={M}" for M in ms) + " | |",
             "|---|---|---|---|" + "---|" * len(ms) + "---|"]
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
    for c in decision["candidates"]:
        cells = [f"{fmt(c['per_m'].get(str(M), {}).get('score'))}/{fmt(c['per_m'].get(str(M), {}).get('kappa'))}/"
                 f"{fmt(c['per_m'].get(str(M), {}).get('fd'))}" for M in ms]
        chosen = ((c["model"], c["settings"], c["trained"], c["recipe"])
                  == (decision["variant"], decision["settings"], decision["trained"], decision["recipe"]))
        mark = "**chosen**" if chosen else (
            c["reason"] or ("best of variant" if c["best_of_variant"] else ""))
        shown = settings_key({**c["trained"], **c["settings"]})
        recipe = ", ".join(f"{k}={c['recipe'].get(k)}" for k in varying) or "–"
        lines.append(f"| {c['model']} | {recipe} | {shown} | {fmt(c['score'])} | " + " | ".join(cells) + f" | {mark} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- step 1: evaluate on validation
def evaluation_settings() -> dict:
    """{field name: its dataclass field} of every evaluation setting of the variants' configs."""
    from shala_bench.registry import get_registry

    reg = get_registry()
    out = {}
    for model in VARIANTS:
        cls = reg.get_model(model).config
        out.update({f.name: f for f in dataclasses.fields(cls) if f.name in cls.evaluation_fields()})
    return out


def parse_grid(items: list[str]) -> dict[str, list]:
    from shala_bench.config import coerce
    from shala_bench.errors import ProtocolError

    fields = evaluation_settings()
    grid: dict[str, list] = {}
    for item in items:
        key, _, values = item.partition("=")
        if key not in fields:
            raise SelectionError(f"--grid {key}: only the variants' evaluation settings can be chosen here "
                                 f"({', '.join(sorted(fields))})")
        try:
            grid[key] = [coerce(key, fields[key].type, v) for v in values.split(",") if v]
        except ProtocolError as e:
            raise SelectionError(f"--grid {item}: {e}") from None
    return grid


def grid_points(model: str, grid: dict[str, list]) -> list[dict]:
    keys = sorted(k for k in grid if k in READS[model])
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def validation_view(data):
    """The loaded dataset with its validation split in the place of the test split (what metrics read)."""
    return dataclasses.replace(data, splits={**data.splits, "test": data.splits["val"]})


def validation_folder(out: Path, rec, settings: dict) -> Path:
    """Where the validation record of training run `rec` under evaluation `settings` goes."""
    tag = hashlib.sha256(settings_key(settings).encode()).hexdigest()[:10]
    return Path(out) / rec.dataset / rec.model / rec.run_id / tag


def recipe_of(protocol: dict) -> dict:
    """The recipe a run was trained under, the same at every M: its trained settings but n_modalities."""
    from shala_bench.protocol import trained_fields

    return {k: v for k, v in trained_fields(protocol).items() if k != "n_modalities"}


def evaluate_on_validation(run: Path, settings: dict, out: Path, cache_dir: Path, device: str = "cpu",
                           metrics: tuple[str, ...] = METRICS) -> Path:
    """One validation record for a finished training run under evaluation `settings`; returns its path."""
    import torch

    from shala_bench.evaluate import evaluate
    from shala_bench.protocol import make_protocol, trained_fields
    from shala_bench.registry import get_registry
    from shala_bench.results import RECORD, atomic_write_text, now, read_record
    from shala_bench.trainer import load_checkpoint

    rec = read_record(Path(run) / RECORD)
    if rec.protocol.get("protocol_version", 1) < 2:
        raise SelectionError(f"{run} was trained under protocol v{rec.protocol.get('protocol_version', 1)}, whose "
                             "model settings protocol v2 keeps in the model's config: retrain it")
    reg = get_registry()
    ds, entry = reg.get_dataset(rec.dataset), reg.get_model(rec.model)
    p = make_protocol(ds, rec.profile, trained_fields(rec.protocol))
    evaluation = set(entry.config.evaluation_fields())
    recorded = {k: v for k, v in rec.config.items() if k not in evaluation}  # the trained model config
    cfg = entry.resolve(p, {**recorded, **settings}).config
    data = ds.loader(p, None)
    if len(data.splits["val"]) == 0:
        raise SelectionError(f"{run}: the protocol has no validation split (n_val = 0)")
    torch.manual_seed(rec.seed)
    model = entry.build(data.spec, p, cfg)
    model.load_state_dict(load_checkpoint((Path(run) / rec.checkpoint).resolve())["model"])
    # trained settings that differ from the profile's: the recipe's, then the model config's (against its
    # defaults resolved under the run's recipe, so an inherited value that follows the recipe is not counted twice)
    base = trained_fields(make_protocol(ds, rec.profile, {"n_modalities": rec.n_modalities}).to_dict())
    recipe = recipe_of(rec.protocol)
    trained = {k: v for k, v in recipe.items() if base.get(k) != v}
    defaults = entry.resolve(p).config.to_dict()
    trained.update({(k if k not in trained else f"{rec.model}.{k}"): v for k, v in recorded.items()
                    if defaults.get(k) != v})
    folder = validation_folder(out, rec, settings)
    values, timings, _ = evaluate(model, p, validation_view(data), folder, rec.seed, device, cache_dir, only=list(metrics))
    body = {"kind": KIND, "split": "val", "model": rec.model, "dataset": rec.dataset, "n_modalities": rec.n_modalities,
            "seed": rec.seed, "settings": settings, "trained": trained, "recipe": recipe,
            "metrics": values, "timings": timings, "protocol_hash": p.hash,
            "config": cfg.to_dict(), "config_hash": cfg.hash,
            "source_run": str(Path(run).resolve()), "created": now()}
    atomic_write_text(folder / VALIDATION, json.dumps(body, indent=2, sort_keys=True) + "\n")
    return folder / VALIDATION


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("evaluate", help="validation records of finished variant runs, per grid point")
    ev.add_argument("--runs", required=True, help="results folder of the training runs")
    ev.add_argument("--out", required=True, help="where the validation records go")
    ev.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="evaluation setting to vary")
    ev.add_argument("--cache-dir", help="cache for the validation evaluation (default <out>/.cache)")
    ev.add_argument("--device", default="cpu", help="torch device of the evaluation (default cpu)")
    se = sub.add_parser("select", help="pick the variant from validation records")
    se.add_argument("--records", required=True, help="folder of validation records that `evaluate` wrote")
    se.add_argument("--ms", default="2,5,8",
                    help="the M values the score averages over, comma-separated (default 2,5,8); a candidate "
                         "without a record at one of them is out")
    se.add_argument("--max-kappa-drop", type=float, default=0.05,
                    help="guard rail: joint κ at most this much below the incumbent's, at every M (default 0.05)")
    se.add_argument("--max-fd-ratio", type=float, default=1.25,
                    help="guard rail: in-domain FD at most this many times the incumbent's, at every M (default 1.25)")
    se.add_argument("--min-gain", type=float, default=0.0,
                    help="a challenger must beat the incumbent's score by more than this (default 0: a tie keeps it)")
    se.add_argument("--json", help="write the decision here")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "evaluate":
            from shala_bench.results import RECORD, read_record

            grid = parse_grid(args.grid)
            cache = Path(args.cache_dir or Path(args.out) / ".cache")
            runs = [p.parent for p in sorted(Path(args.runs).rglob(RECORD))]
            done = 0
            for run in runs:
                rec = read_record(run / RECORD)
                if rec.model not in VARIANTS or not rec.ok:
                    continue
                for point in grid_points(rec.model, grid):
                    path = validation_folder(Path(args.out), rec, point) / VALIDATION
                    # a grid point already evaluated is kept, so the step resumes after an interrupted session
                    # and a later call adds only the new runs (the checkpoints may be gone by then)
                    verb = "kept"
                    if not path.exists():
                        path, verb = evaluate_on_validation(run, point, Path(args.out), cache, args.device), "->"
                    print(f"{rec.model} M={rec.n_modalities} seed={rec.seed} {settings_key(point)} {verb} {path}", flush=True)
                    done += 1
            if not done:
                raise SelectionError(f"no finished runs of {', '.join(VARIANTS)} under {args.runs}")
            return 0
        decision = select(read_validation_records(Path(args.records)), tuple(int(m) for m in args.ms.split(",")),
                          args.max_kappa_drop, args.max_fd_ratio, args.min_gain)
        print(table(decision))
        print(f"\nshala = {decision['variant']} with {settings_key({**decision['trained'], **decision['settings']})} "
              f"(validation score {decision['score']:.3f}; incumbent {decision['incumbent']['score']:.3f})")
        if args.json:
            Path(args.json).write_text(json.dumps(decision, indent=2, sort_keys=True) + "\n")
        return 0
    except SelectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
