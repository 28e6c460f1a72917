"""Coherence against training samples: the tool for sizing a profile's budget (a benchmark, not a test).

    python benchmarks/learning_curve.py --model mopoe --steps 1000 --every 250
    python benchmarks/learning_curve.py --model mmvae --steps 1500 --set batch_size=8
    python benchmarks/learning_curve.py --model shala --steps 2400 --every 600 --set patience=3

Trains one model with the harness's own Trainer — every stage (ShaLa's prior stage too), each for
at most `--steps` steps of the profile's batch size (max_train_samples and prior_max_samples =
steps x batch), validated every `--every` steps (eval_every) — and a callback that, at each
validation, also prints one JSON line: the stage, step, samples, the seconds spent so far
(this script's own test evaluations excluded), the validation selection value, and the
conditional coherence at k = 1 and k = M-1 and the joint coherence on `--eval-n` test tuples with
the harness's cached classifiers (noise in a forked RNG, so printing the curve never changes the
training). The patience is 0 unless `--set patience=N` asks for plateau stopping. A budget is large
enough when every model's k = 1 coherence has left chance (1/C) and its validation value has
flattened by its last step; the profile comments quote what this printed.

(Before issue 14 a `--from RUN` option continued a finished run past its budget; a checkpoint now
belongs to its protocol's budget, so train with a larger --steps and read the curve instead.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from shala_bench.evaluate import EvalContext
from shala_bench.metrics.coherence import conditional_coherence, joint_coherence
from shala_bench.protocol import make_protocol, parse_overrides
from shala_bench.registry import get_registry
from shala_bench.trainer import Callback, Trainer
from shala_bench.validation import Validator


class PrintCurve(Callback):
    """At every validation: test-split coherences of the current weights, as one JSON line."""

    def __init__(self, ctx: EvalContext, model_name: str, seed: int):
        self.ctx, self.model_name, self.seed = ctx, model_name, seed
        self.t0, self.own_s = time.perf_counter(), 0.0

    def on_eval(self, trainer, row: dict) -> None:
        t = time.perf_counter()
        model, M = trainer.model, trainer.protocol.n_modalities
        was = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + 10_000)
            c = conditional_coherence(self.ctx)
            j = joint_coherence(self.ctx)
        model.train(was)
        print(json.dumps({"model": self.model_name, "M": M, "batch": trainer.batch_size, "stage": row["stage"],
                          "step": row["step"], "samples": row["samples"],
                          "s": round(t - self.t0 - self.own_s, 1), "val_selection": round(row["val_selection"], 4),
                          "k1": round(c["coherence_cond_k1"], 3), f"k{M - 1}": round(c[f"coherence_cond_k{M - 1}"], 3),
                          "joint": round(j["coherence_joint"], 3)}), flush=True)
        self.own_s += time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mopoe")
    ap.add_argument("--dataset", default="polymnist-synth")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=1000, help="step budget of each stage (x batch = its samples)")
    ap.add_argument("--every", type=int, default=250, help="steps between validations (and printed lines)")
    ap.add_argument("--eval-n", type=int, default=300, help="test tuples per coherence estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="protocol override KEY=VALUE")
    args = ap.parse_args()

    reg = get_registry()
    ds = reg.get_dataset(args.dataset)
    over = parse_overrides(args.overrides)
    batch = make_protocol(ds, args.profile, over).batch_size
    budget = {"max_train_samples": args.steps * batch, "prior_max_samples": args.steps * batch,
              "eval_every": args.every * batch, "patience": 0}
    p = make_protocol(ds, args.profile, {**budget, **over, "eval_n": args.eval_n, "joint_n": 2 * args.eval_n})
    data = ds.loader(p, None)
    torch.manual_seed(args.seed)
    model = reg.get_model(args.model).factory(data.spec, p)
    with tempfile.TemporaryDirectory() as tmp:
        # one context for the whole curve: it holds the model by reference and loads the classifiers once
        ctx = EvalContext(model, p, data, torch.device("cpu"), Path(tmp), args.seed)
        validator = Validator(data, p, ds.selection, "cpu", None, args.seed)
        Trainer(model, p, data.splits["train"], Path(tmp), args.seed, progress=False,
                callbacks=[PrintCurve(ctx, args.model, args.seed)], validator=validator).fit()


if __name__ == "__main__":
    main()
