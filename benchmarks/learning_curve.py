"""Coherence against training samples: the tool for sizing a profile's budget and choosing its recipe (a benchmark).

    python benchmarks/learning_curve.py --model mopoe --steps 1000 --every 250
    python benchmarks/learning_curve.py --model mmvae --steps 1500 --set batch_size=8 --threads 1
    python benchmarks/learning_curve.py --model shala --steps 2400 --every 600 --set patience=3
    python benchmarks/learning_curve.py --model mopoe --set mopoe.beta=1 --set polymnist-synth.version=1

Trains one model with the harness's own Trainer — every stage (ShaLa's prior stage too), each for
at most `--steps` steps of the profile's batch size (max_train_samples = steps x batch; ShaLa's
prior inherits it), validated every `--every` steps (eval_every) — and a callback that, at each
validation, also prints one JSON line: the stage, step, samples, the training seconds so far (wall,
and this process's CPU seconds; this script's own coherence evaluations excluded), the validation
selection value, and the conditional coherence at k = 1 and k = M-1 and the joint coherence on
`--eval-n` tuples of `--split` — `val` by default: a recipe or a budget is chosen on the validation
split, never on test — with the harness's cached judge classifiers (trained on train), in a forked
RNG so printing the curve never changes the training. The patience is 0 unless `--set patience=N`
asks for plateau stopping. `benchmarks/recipe_study.py` runs a grid of these.

(Before issue 14 a `--from RUN` option continued a finished run past its budget; a checkpoint now
belongs to its recipe's budget, so train with a larger --steps and read the curve instead.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from shala_bench.evaluate import EvalContext
from shala_bench.launch import RunSpec, resolve
from shala_bench.metrics.classifiers import get_classifiers
from shala_bench.metrics.coherence import conditional_coherence, joint_coherence
from shala_bench.protocol import make_protocol, parse_overrides
from shala_bench.registry import get_registry
from shala_bench.trainer import Callback, Trainer
from shala_bench.validation import Validator


class PrintCurve(Callback):
    """At every validation: coherences of the current weights on the scored split, as one JSON line."""

    def __init__(self, ctx: EvalContext, model_name: str, seed: int, split: str):
        self.ctx, self.model_name, self.seed, self.split = ctx, model_name, seed, split
        self.t0, self.c0, self.own_s, self.own_cpu = time.perf_counter(), time.process_time(), 0.0, 0.0

    def on_eval(self, trainer, row: dict) -> None:
        t, c0 = time.perf_counter(), time.process_time()
        model, M = trainer.model, trainer.protocol.n_modalities
        was = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + 10_000)
            c = conditional_coherence(self.ctx)
            j = joint_coherence(self.ctx)
        model.train(was)
        print(json.dumps({"model": self.model_name, "M": M, "batch": trainer.batch_size, "stage": row["stage"],
                          "step": row["step"], "samples": row["samples"], "split": self.split,
                          "train_s": round(t - self.t0 - self.own_s, 1),
                          "train_cpu_s": round(c0 - self.c0 - self.own_cpu, 1),
                          "val_selection": round(row["val_selection"], 4),
                          "k1": round(c["coherence_cond_k1"], 3), f"k{M - 1}": round(c[f"coherence_cond_k{M - 1}"], 3),
                          "joint": round(j["coherence_joint"], 3)}), flush=True)
        self.own_s += time.perf_counter() - t
        self.own_cpu += time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mopoe")
    ap.add_argument("--dataset", default="polymnist-synth")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=1000, help="step budget of each stage (x batch = its samples)")
    ap.add_argument("--every", type=int, default=250, help="steps between validations (and printed lines)")
    ap.add_argument("--eval-n", type=int, default=300, help="tuples of --split per coherence estimate")
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="the split the printed coherences are measured on (val: for choosing recipes and budgets)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="KEY=VALUE for the recipe, MODEL.KEY=VALUE for the model's own settings")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    reg = get_registry()
    ds = reg.get_dataset(args.dataset)
    over = parse_overrides(args.overrides)
    batch = make_protocol(ds, args.profile, over).batch_size
    budget = {"max_train_samples": args.steps * batch, "eval_every": args.every * batch, "patience": 0}
    spec = RunSpec(model=args.model, dataset=args.dataset, profile=args.profile, seed=args.seed,
                   overrides=tuple({**budget, **over, "eval_n": args.eval_n, "joint_n": 2 * args.eval_n}.items()))
    p, entry, _, cfg = resolve(spec, reg)
    data = ds.loader(p, None)
    if args.split == "val" and len(data.splits["val"]) < args.eval_n:
        raise SystemExit(f"error: --eval-n {args.eval_n} > the {len(data.splits['val'])} val tuples (n_val)")
    torch.manual_seed(args.seed)
    model = entry.build(data.spec, p, cfg.config)
    # the coherence metrics read ctx.test(): point it at the scored split (the judges are keyed by the real
    # splits and trained on train, so val and test curves are scored by the same classifiers)
    scored = dataclasses.replace(data, splits={**data.splits, "test": data.splits[args.split]})
    with tempfile.TemporaryDirectory() as tmp:
        # one context for the whole curve: it holds the model by reference and loads the classifiers once
        ctx = EvalContext(model, p, scored, torch.device("cpu"), Path(tmp), args.seed)
        ctx.classifiers = get_classifiers(data, p, torch.device("cpu"))  # keyed and scored by the real splits
        validator = Validator(data, p, ds.selection, "cpu", None, args.seed)
        Trainer(model, p, data.splits["train"], Path(tmp), args.seed, progress=False,
                callbacks=[PrintCurve(ctx, args.model, args.seed, args.split)], validator=validator).fit()


if __name__ == "__main__":
    main()
