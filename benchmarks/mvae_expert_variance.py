"""What MVAE's unimodal experts say about 256 validation tuples: per expert, the spread of its means over the
batch and its log-variances. An expert whose log-variance is far above 0 has switched itself off: the
product of experts is then the prior expert alone, and the gradient through its precision exp(-logvar)
vanishes, so it never comes back (benchmarks/results/mvae_warmup/README.md, seed 1).

    python benchmarks/mvae_expert_variance.py --results /work/runs-mvae --seed 1 --warmup-samples 61440

reads <results>/polymnist-synth/mvae/<run>/checkpoint.pt (the last state; --checkpoint best.pt for the best)
of the quick-profile M = 2 run with that seed and warm-up, finished or not (no record is needed).

    python benchmarks/mvae_expert_variance.py --results /tmp/x --seed 1 --warmup-samples 61440 --first-steps 30

instead trains that run's first steps again (its initial weights, batches and seed, as `shala-bench run`
does) and prints the experts' log-variance on each step's batch: where a seed's experts switch off. Two
probes of what drives it, for --first-steps only: --kl-off-steps N holds the KL weight at exactly 0 for the
first N steps (then the warm-up ramp starts), --logvar-bound L puts the experts' log-variance through
L·tanh(logvar / L). Neither is an MVAE setting; they patch this process's MVAE. --lr-warmup-steps N raises the
learning rate linearly over the first N steps, as MVAEConfig.lr_warmup_samples = N · batch size does in a run.
"""

from __future__ import annotations

import argparse

import torch

from shala_bench.contract import StageBudget
from shala_bench.data.spec import to_float
from shala_bench.launch import RunSpec, prepare
from shala_bench.trainer import BatchStream, load_checkpoint, make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--warmup-samples", type=int, required=True, help="the run's KL warm-up, in samples")
    ap.add_argument("--modalities", type=int, default=2)
    ap.add_argument("--checkpoint", default="checkpoint.pt")
    ap.add_argument("--first-steps", type=int, default=0, help="train this many first steps instead of reading a checkpoint")
    ap.add_argument("--kl-off-steps", type=int, default=0, help="probe: KL weight exactly 0 for this many first steps")
    ap.add_argument("--logvar-bound", type=float, default=0.0, help="probe: experts' logvar through L*tanh(logvar/L)")
    ap.add_argument("--lr-warmup-steps", type=int, default=0,
                    help="probe: learning rate rising linearly from lr/N to lr over the first N steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    patch_probes(args.kl_off_steps, args.logvar_bound)
    probe = prepare(RunSpec(model="mvae", results=args.results))
    fraction = args.warmup_samples / probe.protocol.max_train_samples
    spec = RunSpec(model="mvae", seed=args.seed, results=args.results,
                   overrides=(("n_modalities", args.modalities), ("mvae.kl_warmup", repr(fraction))))
    prep = prepare(spec)
    data = prep.dataset_entry.loader(prep.protocol, None)
    torch.manual_seed(args.seed)  # as launch.run_one builds the model, and the trainer starts
    model = prep.model_entry.build(data.spec, prep.protocol, prep.config)
    if args.first_steps:
        first_steps(model, prep.protocol, data, args.seed, args.first_steps, args.lr_warmup_steps)
        return
    ck = load_checkpoint(prep.dir / args.checkpoint)
    model.load_state_dict(ck["model"])
    model.eval()
    x = {m: to_float(v[:256]) for m, v in data.splits["val"].data.items()}
    with torch.no_grad():
        mu, logvar, names = model.experts(x)
    print(f"{prep.dir.name} ({args.checkpoint}: {ck['state']['stage']} step {ck['state']['step']})")
    print("| expert | sd of mean over the batch | mean abs mean | logvar mean | logvar min | logvar max |")
    print("|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        print(f"| {name} | {mu[i].std(0).mean():.3f} | {mu[i].abs().mean():.2f} | {logvar[i].mean():.2f} "
              f"| {logvar[i].min():.2f} | {logvar[i].max():.2f} |")


def patch_probes(kl_off_steps: int, bound: float) -> None:
    from shala_bench.baselines import mvae

    kl_weight, experts = mvae.MVAE.kl_weight, mvae.MVAE.experts
    if kl_off_steps:
        def delayed(self, batch_size):
            off = kl_off_steps * self.protocol.batch_size
            if not self.training or self.config.kl_warmup <= 0:
                return kl_weight(self, batch_size)
            span = self.config.kl_warmup * self.protocol.max_train_samples
            return self.config.beta * ((self.samples_seen + batch_size - off) / span).clamp(0.0, 1.0).float()
        mvae.MVAE.kl_weight = delayed
    if bound:
        def bounded(self, x):
            mu, logvar, names = experts(self, x)
            return mu, bound * torch.tanh(logvar / bound), names
        mvae.MVAE.experts = bounded


def first_steps(model, p, data, seed: int, n: int, lr_warmup_steps: int = 0) -> None:
    torch.manual_seed(seed)
    opt = make_optimizer(model.stage_parameters("vae"), p.lr)
    stream = BatchStream(data.splits["train"], p.batch_size, seed, 0, "cpu")
    # the trainer's own schedule, so the probe warms up exactly as a run with this warm-up does
    warmup = StageBudget(max_samples=n * p.batch_size, lr=p.lr, lr_warmup_samples=lr_warmup_steps * p.batch_size)
    model.train()
    print("| step | loss | KL weight | expert logvar mean | max | mean abs mean |")
    print("|---|---|---|---|---|---|")
    for step in range(n):
        batch = stream.batch(step)
        if lr_warmup_steps:
            for group in opt.param_groups:
                group["lr"] = warmup.lr_at((step + 1) * p.batch_size)
        loss, logs = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            mu, logvar, _ = model.experts(batch)
        print(f"| {step + 1} | {loss.item():.0f} | {float(logs.get('kl_weight', 0.0)):.3f} | {logvar.mean():.2f} "
              f"| {logvar.max():.2f} | {mu.abs().mean():.2f} |")


if __name__ == "__main__":
    main()
