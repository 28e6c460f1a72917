"""Coherence against training steps: the tool for sizing a profile's budget (a benchmark, not a test).

    python benchmarks/learning_curve.py --model mopoe --steps 1000 --every 250
    python benchmarks/learning_curve.py --model mmvae --steps 1500 --set batch_size=8
    python benchmarks/learning_curve.py --from runs/polymnist-synth/mmvae+/seed0-M8-c64fcc383f13 --steps 1600 --every 800

Trains one model with the profile's optimiser and batches (the Trainer's own BatchStream)
and, every `--every` steps, prints one JSON line: the training seconds so far (wall and this
process's CPU), the training samples so far and the conditional coherence at k = 1 and k = M-1
and the joint coherence, on `--eval-n` tuples of `--split` (default `val`: a recipe or a budget
is chosen on the validation split, never on test) with the harness's cached classifiers (trained
on train, as every evaluation's). Only the first stage is trained, so a
two-stage model (ShaLa) is refused: curve its stage-1 ablation (shala-noprior). A budget
is large enough when every model's k = 1 coherence has left chance (1/C) by its last
step; the profile comments quote what this printed.

`--from RUN` continues a finished single-stage run past its budget instead: the run's
protocol, its checkpoint's weights and Adam state, and the batches the Trainer would have
drawn next; it prints the curve from the run's last step (first line: the run as it
ended), so a run that ended at chance shows how many more steps it needed.
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
from shala_bench.metrics.classifiers import get_classifiers
from shala_bench.metrics.coherence import conditional_coherence, joint_coherence
from shala_bench.protocol import make_protocol, parse_overrides, trained_fields
from shala_bench.registry import get_registry
from shala_bench.results import RECORD, read_record
from shala_bench.trainer import BatchStream, load_checkpoint, make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mopoe")
    ap.add_argument("--dataset", default="polymnist-synth")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--eval-n", type=int, default=300, help="tuples of --split per coherence estimate")
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="the split coherence is measured on (val: for choosing recipes and budgets)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="protocol override KEY=VALUE")
    ap.add_argument("--from", dest="from_run", metavar="RUN",
                    help="continue this finished run (folder) for --steps more steps; --model, --dataset, --profile, "
                         "--seed and --set come from its record")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    reg = get_registry()
    evaluation = {"eval_n": args.eval_n, "joint_n": 2 * args.eval_n}
    ck = None
    if args.from_run:
        rec = read_record(Path(args.from_run) / RECORD)
        ck = load_checkpoint((Path(args.from_run) / rec.checkpoint).resolve())
        args.model, args.dataset, args.profile, args.seed = rec.model, rec.dataset, rec.profile, rec.seed
        over = trained_fields(rec.protocol)
    else:
        over = parse_overrides(args.overrides)
    ds = reg.get_dataset(args.dataset)
    p = make_protocol(ds, args.profile, {**over, **evaluation})
    data = ds.loader(p, None)
    torch.manual_seed(args.seed)
    model = reg.get_model(args.model).factory(data.spec, p)
    if len(model.stages) > 1:
        raise SystemExit(f"error: {args.model} trains stages {model.stages}; this script trains only the first "
                         "(curve its stage-1 ablation, e.g. shala-noprior)")
    stream = BatchStream(data.splits["train"], p.batch_size, args.seed, 0, "cpu")
    opt = make_optimizer(model.stage_parameters("vae"), p.lr)
    start = 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch"])
        start = int(ck["state"]["step"])
    M, train_s, train_cpu_s = p.n_modalities, 0.0, 0.0
    # the metrics read ctx.test(): point it at the chosen split; the judges are the harness's own, trained
    # on train and keyed by the real splits, so val and test curves are scored by the same classifiers
    scored = dataclasses.replace(data, splits={**data.splits, "test": data.splits[args.split]})
    if args.split == "val" and len(data.splits["val"]) < args.eval_n:
        raise SystemExit(f"error: --eval-n {args.eval_n} > the {len(data.splits['val'])} val tuples (n_val)")
    with tempfile.TemporaryDirectory() as tmp:
        # one context for the whole curve: it holds the model by reference and loads the classifiers once
        ctx = EvalContext(model, p, scored, torch.device("cpu"), Path(tmp), args.seed)
        ctx.classifiers = get_classifiers(data, p, torch.device("cpu"))
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(start, start + args.steps + 1):
            if s > start:  # step s-1 of the Trainer's numbering: the batch it would draw
                model.train()
                loss, _ = model.loss(stream.batch(s - 1), "vae")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            at_start, due = s == start, (s - start) % args.every == 0 or s == start + args.steps
            if (at_start and ck is None) or not (at_start or due):
                continue
            train_s += time.perf_counter() - t0
            train_cpu_s += time.process_time() - c0
            model.eval()
            with torch.no_grad():
                c = conditional_coherence(ctx)
                j = joint_coherence(ctx)
            print(json.dumps({"model": args.model, "M": M, "batch": p.batch_size, "step": s,
                              "samples": s * p.batch_size, "split": args.split,
                              "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1),
                              "k1": round(c["coherence_cond_k1"], 3),
                              f"k{M - 1}": round(c[f"coherence_cond_k{M - 1}"], 3),
                              "joint": j["coherence_joint"]}), flush=True)
            t0, c0 = time.perf_counter(), time.process_time()


if __name__ == "__main__":
    main()
