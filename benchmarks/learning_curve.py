"""Coherence against training steps: the tool for sizing a profile's budget (a benchmark, not a test).

    python benchmarks/learning_curve.py --model mopoe --steps 1000 --every 250
    python benchmarks/learning_curve.py --model mmvae --steps 1500 --set batch_size=8 --set mmvae.K=4
    python benchmarks/learning_curve.py --from runs/polymnist-synth/mmvae+/seed0-M8-c64fcc383f13-1a2b3c4d --steps 1600 --every 800

Trains one model with the profile's optimiser and batches (the Trainer's own BatchStream)
and, every `--every` steps, prints one JSON line: the training seconds so far and the
conditional coherence at k = 1 and k = M-1 and the joint coherence, on `--eval-n` test
tuples with the harness's cached classifiers. Only the first stage is trained, so a
two-stage model (ShaLa) is refused: curve its stage-1 ablation (shala-noprior). A budget
is large enough when every model's k = 1 coherence has left chance (1/C) by its last
step; the profile comments quote what this printed.

`--set` takes recipe settings (`batch_size=8`) and the model's or the dataset's own
(`mmvae.K=4`, `ntu120.frames=16`), as `shala-bench run` does.

`--from RUN` continues a finished single-stage run past its budget instead: the run's
recipe and model config (from its record), its checkpoint's weights and Adam state, and the batches the Trainer would have
drawn next; it prints the curve from the run's last step (first line: the run as it
ended), so a run that ended at chance shows how many more steps it needed.
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
from shala_bench.launch import RunSpec, check_namespaces, resolve
from shala_bench.protocol import parse_overrides, trained_fields
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
    ap.add_argument("--eval-n", type=int, default=300, help="test tuples per coherence estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override KEY=VALUE (a recipe setting) or "
                    "<model or dataset>.KEY=VALUE (its own setting)")
    ap.add_argument("--from", dest="from_run", metavar="RUN",
                    help="continue this finished run (folder) for --steps more steps; --model, --dataset, --profile, "
                         "--seed and --set come from its record")
    args = ap.parse_args()

    reg = get_registry()
    evaluation = {"eval_n": args.eval_n, "joint_n": 2 * args.eval_n}
    ck = None
    if args.from_run:
        rec = read_record(Path(args.from_run) / RECORD)
        ck = load_checkpoint((Path(args.from_run) / rec.checkpoint).resolve())
        args.model, args.dataset, args.profile, args.seed = rec.model, rec.dataset, rec.profile, rec.seed
        if rec.protocol.get("protocol_version", 1) < 2:
            raise SystemExit(f"error: {args.from_run} was trained under protocol v{rec.protocol.get('protocol_version', 1)}, "
                             "whose model settings protocol v2 keeps in the model's config: retrain it")
        # the run's recipe (trained settings) and its recorded model config, namespaced as on the command line
        over = {**trained_fields(rec.protocol), **{f"{rec.model}.{k}": v for k, v in rec.config.items()}}
    else:
        over = parse_overrides(args.overrides)
        check_namespaces(over, {args.model, args.dataset}, reg, "this curve")
    spec = RunSpec(model=args.model, dataset=args.dataset, profile=args.profile, seed=args.seed,
                   overrides=tuple({**over, **evaluation}.items()))
    p, entry, ds, resolved = resolve(spec, reg)
    cfg = resolved.config
    if args.from_run and cfg.hash != rec.config_hash:
        raise SystemExit(f"error: the config of {args.from_run} does not resolve to its recorded config_hash: "
                         "the model's settings changed since it was trained")
    data = ds.loader(p, None)
    torch.manual_seed(args.seed)
    model = entry.build(data.spec, p, cfg)
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
    M, train_s = p.n_modalities, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        # one context for the whole curve: it holds the model by reference and loads the classifiers once
        ctx = EvalContext(model, p, data, torch.device("cpu"), Path(tmp), args.seed)
        t0 = time.perf_counter()
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
            model.eval()
            with torch.no_grad():
                c = conditional_coherence(ctx)
                j = joint_coherence(ctx)
            print(json.dumps({"model": args.model, "M": M, "batch": p.batch_size, "step": s,
                              "train_s": round(train_s, 1), "k1": round(c["coherence_cond_k1"], 3),
                              f"k{M - 1}": round(c[f"coherence_cond_k{M - 1}"], 3),
                              "joint": j["coherence_joint"]}), flush=True)
            t0 = time.perf_counter()


if __name__ == "__main__":
    main()
