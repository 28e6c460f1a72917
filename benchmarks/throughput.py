"""Training throughput and harness overhead (a benchmark, not a test).

    python benchmarks/throughput.py --model mvae --steps 60

Measures, at the profile's batch size on polymnist-synth:
- samples/s of the real Trainer (batches drawn from in-memory uint8 tensors, NaN guard,
  progress bar, logging), with the cost of a checkpoint (timed) amortised over the
  profile's `checkpoint_every`;
- samples/s of a bare loop that runs only the model's loss, backward and optimizer step
  on the same batches, prepared beforehand;
- the harness overhead: the fraction of the Trainer's step time spent outside the bare
  model work. Trials alternate between the two to share the machine's noise; medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shala_bench.data.spec import to_float
from shala_bench.protocol import make_protocol, parse_overrides
from shala_bench.registry import get_registry
from shala_bench.trainer import BatchStream, Trainer


def bare_loop(model, batches, lr: float) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t = time.perf_counter()
    for b in batches:
        loss, _ = model.loss(b, "vae")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mvae")
    ap.add_argument("--dataset", default="polymnist-synth")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=60, help="steps per trial")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    reg = get_registry()
    ds = reg.get_dataset(args.dataset)
    base = make_protocol(ds, args.profile, parse_overrides(args.overrides))
    data = ds.loader(base, None)
    # a trial writes one checkpoint (its last step); its cost is timed and amortised over checkpoint_every
    p = make_protocol(ds, args.profile, {**parse_overrides(args.overrides), "steps": args.steps,
                                         "checkpoint_every": max(args.steps, base.checkpoint_every)})
    entry = reg.get_model(args.model)
    stream = BatchStream(data.splits["train"], p.batch_size, 0, 0, "cpu")
    batches = [stream.batch(s) for s in range(args.steps)]

    harness, bare = [], []
    for trial in range(args.trials):
        torch.manual_seed(trial)
        model = entry.factory(data.spec, p)
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(model, p, data.splits["train"], Path(tmp), seed=trial, progress=True)
            t = time.perf_counter()
            tr.fit()
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            tr.save()
            save_s = time.perf_counter() - t
            harness.append(fit_s - save_s + save_s * args.steps / base.checkpoint_every)
        torch.manual_seed(trial)
        bare.append(bare_loop(entry.factory(data.spec, p), batches, p.lr))

    h, b = statistics.median(harness), statistics.median(bare)
    n = args.steps * p.batch_size
    print(f"model={args.model} dataset={args.dataset} profile={args.profile} M={p.n_modalities} "
          f"batch={p.batch_size} steps/trial={args.steps} trials={args.trials} threads={torch.get_num_threads()}")
    print(f"trainer:   {n / h:8.1f} samples/s  ({h / args.steps * 1000:.1f} ms/step)")
    print(f"bare loop: {n / b:8.1f} samples/s  ({b / args.steps * 1000:.1f} ms/step)")
    print(f"harness overhead: {max(0.0, (h - b) / h) * 100:.1f} % of step time "
          f"(data, NaN guard, logging, a checkpoint every {base.checkpoint_every} steps)")


if __name__ == "__main__":
    main()
