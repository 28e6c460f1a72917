"""Training throughput side by side with MultiVae (a benchmark, not a test; never run in CI).

    python -m venv .venv-multivae --system-site-packages      # see benchmarks/README.md
    OMP_NUM_THREADS=1 .venv-multivae/bin/python benchmarks/peer_multivae.py --models mvae,mopoe --M 5,8

MultiVae (PyPI `multivae`, Apache-2.0) is the library most users of these models reach for.
For each of its MVAE, MoPoE, MMVAE and MMVAE+ this trains our model and MultiVae's on the
same work and prints samples/s for both and the ratio ours / MultiVae:
- the same polymnist-synth tensors, loaded through shala_bench's data API and cut into
  batches by the Trainer's BatchStream, exactly as benchmarks/throughput.py does; both
  sides see the same batches (a pool of up to --pool distinct batches, cycled);
- the same batch, latent sizes and per-modality networks: MultiVae's
  `EncoderConvMMNIST_adapted` / `DecoderConvMMNIST`, the PolyMNIST networks ours follow
  (parameter counts are printed and checked);
- the settings of the recipe (default: the quick profile) and of our model's own config
  (protocol v2; `--set mmvae.K=4` changes it) mapped onto MultiVae's configs: Laplace
  likelihood with our scale, β, K, MVAE's random subsets, MMVAE+'s w size. What cannot be
  matched is printed;
- the same step: loss, backward, Adam (the protocol's lr), as benchmarks/throughput.py's
  bare loop times ours; MultiVae's is `model(inputs).loss`, what its trainer calls;
- the same thread count, and alternating trials in one process (order swapped every
  trial); medians over trials. --warmup steps before each timed trial are not counted.
  Both wall-clock samples/s and samples per CPU-second of the process are reported: at one
  thread on a shared machine the CPU time leaves out the time the process waited for a core.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import Tensor

from shala_bench.config import split_overrides
from shala_bench.launch import check_namespaces
from shala_bench.protocol import make_protocol, parse_overrides
from shala_bench.registry import get_registry
from shala_bench.trainer import BatchStream, make_optimizer

try:
    import multivae
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.models import MMVAE, MVAE, MMVAEConfig, MMVAEPlus, MMVAEPlusConfig, MoPoE, MoPoEConfig, MVAEConfig
    from multivae.models.base import BaseAEConfig
    from multivae.models.nn.base_architectures import BaseMultilatentEncoder
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST_adapted
    from pythae.models.base.base_utils import ModelOutput
except ImportError as e:  # pragma: no cover - a benchmark's environment message
    sys.exit(f"peer_multivae: MultiVae is not importable ({e}); set up its environment as benchmarks/README.md says")

MODELS = ("mvae", "mopoe", "mmvae", "mmvae+")


# ---------------------------------------------------------------- MultiVae models on our settings
class SplitEncoder(BaseMultilatentEncoder):
    """MMVAE+'s encoder as ours is built: ONE `EncoderConvMMNIST_adapted` of width D_w + D_z whose
    heads are split into (w, z), instead of MultiVae's stock `EncoderConvMMNIST_multilatents`
    (two conv trunks, one per latent)."""

    def __init__(self, w_dim: int, z_dim: int):
        super().__init__()
        self.w_dim, self.latent_dim, self.style_dim = w_dim, z_dim, w_dim
        self.net = EncoderConvMMNIST_adapted(BaseAEConfig(input_dim=(3, 28, 28), latent_dim=w_dim + z_dim))

    def forward(self, x: Tensor) -> ModelOutput:
        out = self.net(x)
        loc, h = out.embedding, out.log_covariance  # (B, D_w + D_z), w first as in ours
        return ModelOutput(embedding=loc[:, self.w_dim:], log_covariance=h[:, self.w_dim:],
                           style_embedding=loc[:, :self.w_dim], style_log_covariance=h[:, :self.w_dim])


def mean_subset_size(M: int) -> float:
    """Mean |S| of a subset drawn uniformly among those with 2 <= |S| <= M-1 (MultiVae's MVAE)."""
    sizes = range(2, M)
    return sum(k * math.comb(M, k) for k in sizes) / sum(math.comb(M, k) for k in sizes)


def multivae_model(name: str, spec, p, config) -> tuple[torch.nn.Module, list[str]]:
    """MultiVae's `name` on recipe p's shared settings and our model's own `config` (its resolved Config: β, K,
    MVAE's random subsets, MMVAE+'s w size; read from the built model's `.config`), and the list of settings it
    cannot match."""
    mods = spec.names
    M, D = len(mods), p.latent_dim
    unmatched: list[str] = []
    for m in spec.modalities:
        if m.kind != "image" or tuple(m.shape) != (3, 28, 28) or m.likelihood != "laplace":
            raise SystemExit(f"peer_multivae: needs (3, 28, 28) Laplace images (PolyMNIST networks), "
                             f"got {m.name}: {m.kind} {m.shape} {m.likelihood}")
    common = dict(n_modalities=M, latent_dim=D, input_dims={m: (3, 28, 28) for m in mods},
                  uses_likelihood_rescaling=False, decoders_dist={m: "laplace" for m in mods},
                  decoder_dist_params={m: {"scale": p.likelihood_scale} for m in mods})
    if p.grad_clip:
        unmatched.append(f"grad_clip={p.grad_clip}: neither bare loop clips (our Trainer would)")

    def convs(dz: int):
        cfg = BaseAEConfig(input_dim=(3, 28, 28), latent_dim=dz)
        return ({m: EncoderConvMMNIST_adapted(cfg) for m in mods}, {m: DecoderConvMMNIST(cfg) for m in mods})

    if name == "mvae":
        cfg = MVAEConfig(**common, use_subsampling=True, k=config.subsets, warmup=0, beta=config.beta)
        enc, dec = convs(D)
        model = MVAE(cfg, enc, dec)
        unmatched.append(
            f"random subsets: MultiVae draws k={config.subsets} subset(s) per BATCH (2 <= |S| <= M-1, shared by all "
            "samples), re-runs the encoders of each subset and decodes only its modalities; ours draws one subset per "
            "SAMPLE (masks), encodes once and decodes all M modalities for it - different work (ours: fewer "
            "encoder calls, more decoder calls)")
        if M > 3:
            unmatched.append(
                "random-subset distribution: MultiVae's is uniform over the subsets with 2 <= |S| <= M-1, ours draws "
                "|S| uniformly, then a subset of that size (larger subsets more often: mean |S| "
                f"{(M + 1) / 2:.2f} vs {mean_subset_size(M):.2f}) - a different objective in expectation")
        unmatched.append("KL annealing: MultiVae's warmup set to 0 (ours has none) - matched")
    elif name == "mopoe":
        cfg = MoPoEConfig(**common, beta=config.beta)
        enc, dec = convs(D)
        model = MoPoE(cfg, enc, dec)
        S = 2**M - 1
        note = ("MultiVae gives subset k the contiguous rows [k*floor(B/S), ...) and the rest to the last subset "
                "(the joint); ours tiles a random permutation of the subsets over the batch")
        if S > p.batch_size:
            note += (f" - at B={p.batch_size} < 2^M-1={S} MultiVae reconstructs EVERY sample from the joint "
                     "product only")
        unmatched.append("subset assignment of the reconstruction term: " + note + " (same work)")
        if M > 10:
            unmatched.append("M > 10: ours samples subsets for the KL term; MultiVae enumerates all 2^M - 1")
    elif name == "mmvae":
        cfg = MMVAEConfig(**common, K=config.K, prior_and_posterior_dist="normal", learn_prior=False,
                          beta=config.beta, loss="dreg_looser")
        enc, dec = convs(D)
        model = MMVAE(cfg, enc, dec)
        unmatched.append("posterior/prior: MultiVae's 'normal' with a fixed N(0, I) prior (its defaults are "
                         "Laplace-with-softmax and a learnable prior); ours are Gaussian experts, fixed N(0, I) "
                         "- matched by choice")
        if config.beta != 1.0:
            unmatched.append(f"beta={config.beta}: MultiVae's MMVAE ignores beta (its loss has none); ours multiplies "
                             "the latent terms - NOT matched (no effect on work)")
        unmatched.append("loss scale: MultiVae returns the batch SUM of the negative bound, ours the mean "
                         "(same gradient direction; no effect on work)")
        unmatched.append("decoder calls: MultiVae decodes the M x M (expert, target) pairs in M^2 calls of K*B, "
                         "ours in M calls of M*K*B (same FLOPs)")
    elif name == "mmvae+":
        Dw = config.w_dim
        cfg = MMVAEPlusConfig(**common, K=config.K, prior_and_posterior_dist="laplace_with_softmax",
                              learn_shared_prior=False, learn_modality_prior=True, beta=config.beta,
                              modalities_specific_dim=Dw, reconstruction_option="joint_prior", loss="iwae_looser")
        enc = {m: SplitEncoder(Dw, D) for m in mods}
        dec = {m: DecoderConvMMNIST(BaseAEConfig(input_dim=(3, 28, 28), latent_dim=D + Dw)) for m in mods}
        model = MMVAEPlus(cfg, enc, dec)
        unmatched.append("encoder: EncoderConvMMNIST_adapted of width D_w + D_z split into (w, z), as ours; "
                         "MultiVae's stock EncoderConvMMNIST_multilatents has a second conv trunk for w "
                         "(448,768 vs 355,520 params per modality at D_w = D_z = 32)")
        unmatched.append("prior p(z, w): MultiVae's Laplace(0, softmax(0)*D + 1e-6) = Laplace(0, 1 + 1e-6), "
                         "ours Laplace(0, 1)")
        unmatched.append("latent order in the decoder input: MultiVae (z, w), ours (w, z) (no effect on work)")
        unmatched.append("loss scale: MultiVae returns the batch SUM of the negative bound, ours the mean "
                         "(same gradient direction; no effect on work)")
        unmatched.append("decoder calls: MultiVae decodes the M x M (expert, target) pairs in M^2 calls of K*B, "
                         "ours in M calls of M*K*B (same FLOPs)")
    else:
        raise SystemExit(f"peer_multivae: unknown model {name!r}; choose from {', '.join(MODELS)}")
    return model, unmatched


# ---------------------------------------------------------------- the timed step, identical on both sides
def ours_loss(model, batch: dict[str, Tensor]) -> Tensor:
    return model.loss(batch, "vae")[0]


def multivae_loss(model, batch: dict[str, Tensor]) -> Tensor:
    return model(MultimodalBaseDataset(data=batch)).loss


def timed_loop(loss_fn, model, batches: list, steps: int, warmup: int, lr: float,
               optimizer=torch.optim.Adam) -> tuple[float, float]:
    """Wall-clock and process-CPU seconds for `steps` optimizer steps (after `warmup` untimed ones):
    loss, backward, Adam (each side's own: ours is the Trainer's `make_optimizer`, MultiVae's the
    plain `torch.optim.Adam` its trainer builds). At one thread the CPU time is what the step costs
    even on a shared machine (time spent descheduled is left out); with more threads it sums over them."""
    model.train()
    opt = optimizer(model.parameters(), lr=lr)
    t = c = 0.0
    for s in range(warmup + steps):
        if s == warmup:
            t, c = time.perf_counter(), time.process_time()
        loss = loss_fn(model, batches[s % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t, time.process_time() - c


def n_params(module: torch.nn.Module, trainable: bool = True) -> int:
    return sum(q.numel() for q in module.parameters() if q.requires_grad or not trainable)


def network_params(ours, theirs) -> dict[str, int]:
    """Per-modality encoder and decoder sizes of the first modality, both sides."""
    m = ours.modalities[0]
    return {"enc_ours": n_params(ours.encoders[m]), "enc_multivae": n_params(theirs.encoders[m]),
            "dec_ours": n_params(ours.decoders[m]), "dec_multivae": n_params(theirs.decoders[m])}


# ---------------------------------------------------------------- the mapping, checked on the losses
SUMMED = {"mmvae", "mmvae+"}  # MultiVae returns the batch sum of these losses, ours the mean


def copy_weights(ours, theirs, name: str) -> None:
    """Our networks' weights into MultiVae's (same layers in the same order), so both losses can be compared."""
    with torch.no_grad():
        for i, m in enumerate(ours.modalities):
            for src, dst in ((ours.encoders[m], theirs.encoders[m]), (ours.decoders[m], theirs.decoders[m])):
                for a, b in zip(src.parameters(), dst.parameters(), strict=True):
                    b.copy_(a)
            if name == "mmvae+":  # MultiVae's decoders read (z, w), ours (w, z); r_m's logits
                w = theirs.decoders[m].decoder[0].weight
                w.copy_(torch.cat([w[:, ours.Dw:], w[:, :ours.Dw]], 1))
                theirs.logvars_priors[m].copy_(ours.r_logits[i].unsqueeze(0))


def loss_check(name: str, entry, spec, p, config, batch: dict[str, Tensor], draws: int) -> tuple[float, float, float]:
    """Mean (and the difference's standard error) of both losses over `draws` noise draws, same weights."""
    torch.manual_seed(0)
    ours = entry.build(spec, p, config)
    theirs, _ = multivae_model(name, spec, p, ours.config)
    copy_weights(ours, theirs, name)
    per = next(iter(batch.values())).shape[0] if name in SUMMED else 1
    lo, lt = [], []
    for s in range(draws):
        torch.manual_seed(s)
        np.random.seed(s)
        lo.append(ours_loss(ours, batch).item())
        lt.append(multivae_loss(theirs, batch).item() / per)
    se = (statistics.variance(lo) / draws + statistics.variance(lt) / draws) ** 0.5
    return statistics.mean(lo), statistics.mean(lt), se


# ---------------------------------------------------------------- main
def csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=csv(str), default=list(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--M", type=csv(int), default=[5, 8], help="comma list of modality counts")
    ap.add_argument("--batch", type=csv(int), default=None, help="comma list of batch sizes (default: the profile's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per trial")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each trial")
    ap.add_argument("--pool", type=int, default=16, help="distinct batches, cycled (bounds memory at large batch)")
    ap.add_argument("--dataset", default="polymnist-synth")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override: a recipe setting key=value, or a model's own "
                    "<model>.key=value (e.g. mmvae.K=4, mvae.subsets=2)")
    ap.add_argument("--check", type=int, default=0, metavar="DRAWS",
                    help="before timing, print both losses with our weights copied into MultiVae's, averaged over "
                         "DRAWS noise draws (a check of the mapping; 0 = off)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout, no table)")
    args = ap.parse_args()
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    say = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json == "-" else print

    reg = get_registry()
    ds = reg.get_dataset(args.dataset)
    overrides = parse_overrides(args.overrides)
    check_namespaces(overrides, set(args.models) | {args.dataset}, reg, "this benchmark")
    rows = []
    for M in args.M:
        base = make_protocol(ds, args.profile, {**overrides, "n_modalities": M})
        data = ds.loader(base, None)
        for B in args.batch or [base.batch_size]:
            p = make_protocol(ds, args.profile, {**overrides, "n_modalities": M,
                                                 "batch_size": B})
            stream = BatchStream(data.splits["train"], B, 0, 0, "cpu")
            batches = [stream.batch(s) for s in range(min(args.pool, args.warmup + args.steps))]
            for name in args.models:
                entry = reg.get_model(name)
                # our model's own settings: its defaults under p, with `--set <model>.key=value`
                cfg = entry.resolve(p, split_overrides(overrides)[1].get(name)).config
                check = loss_check(name, entry, data.spec, p, cfg, batches[0], args.check) if args.check else None
                if check:
                    say(f"  {name:7s} M={M} B={B}: loss with the same weights, mean of {args.check} draws: ours "
                        f"{check[0]:.2f}  multivae {check[1]:.2f}  (difference {check[0] - check[1]:+.2f}, "
                        f"s.e. {check[2]:.2f})", flush=True)
                ours_t, theirs_t = [], []
                for trial in range(args.trials):
                    sides = [(True, ours_loss, ours_t, make_optimizer),
                             (False, multivae_loss, theirs_t, torch.optim.Adam)]
                    for mine, loss_fn, out, optimizer in sides if trial % 2 == 0 else sides[::-1]:
                        torch.manual_seed(trial)
                        np.random.seed(trial)  # MultiVae's MVAE draws its subsets with numpy
                        model = entry.build(data.spec, p, cfg) if mine else multivae_model(name, data.spec, p, cfg)[0]
                        out.append(timed_loop(loss_fn, model, batches, args.steps, args.warmup, p.lr, optimizer))
                torch.manual_seed(0)
                ours = entry.build(data.spec, p, cfg)
                theirs, unmatched = multivae_model(name, data.spec, p, ours.config)
                nets = network_params(ours, theirs)
                n = args.steps * B
                wall = lambda ts: statistics.median(t for t, _ in ts)  # noqa: E731
                cpu = lambda ts: statistics.median(c for _, c in ts)  # noqa: E731
                row = dict(model=name, M=M, batch=B, threads=args.threads, steps=args.steps, trials=args.trials,
                           config=cfg.to_dict(),
                           params_ours=n_params(ours), params_multivae=n_params(theirs), **nets,
                           ours_samples_per_s=n / wall(ours_t), multivae_samples_per_s=n / wall(theirs_t),
                           ours_samples_per_cpu_s=n / cpu(ours_t), multivae_samples_per_cpu_s=n / cpu(theirs_t),
                           ours_trial_s=[t for t, _ in ours_t], multivae_trial_s=[t for t, _ in theirs_t],
                           ours_trial_cpu_s=[c for _, c in ours_t], multivae_trial_cpu_s=[c for _, c in theirs_t])
                if check:
                    row.update(loss_ours=check[0], loss_multivae=check[1], loss_diff_se=check[2])
                row["ratio"] = row["ours_samples_per_s"] / row["multivae_samples_per_s"]
                row["ratio_cpu"] = row["ours_samples_per_cpu_s"] / row["multivae_samples_per_cpu_s"]
                rows.append(row)
                row["unmatched"] = unmatched
                say(f"  {name:7s} M={M} B={B}: ours {row['ours_samples_per_s']:7.1f}  multivae "
                    f"{row['multivae_samples_per_s']:7.1f} samples/s  ratio {row['ratio']:.2f} "
                    f"(CPU time: {row['ratio_cpu']:.2f})", flush=True)

    env = dict(torch=torch.__version__, multivae=multivae.__version__ if hasattr(multivae, "__version__") else
               _version("multivae"), python=platform.python_version(), machine=platform.processor() or
               platform.machine(), threads=args.threads, dataset=args.dataset, profile=args.profile,
               overrides=args.overrides, steps=args.steps, warmup=args.warmup, trials=args.trials)
    if args.json:
        doc = json.dumps(dict(env=env, rows=rows), indent=1)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json, "w") as f:
                f.write(doc + "\n")
    if args.json == "-":
        return
    print_report(env, rows)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def print_report(env: dict, rows: list[dict]) -> None:
    print(f"\nours vs MultiVae {env['multivae']} - torch {env['torch']}, {env['threads']} thread(s), "
          f"{env['dataset']} / {env['profile']} {' '.join(env['overrides'])}, "
          f"{env['trials']} alternating trials x {env['steps']} steps (+{env['warmup']} warm-up), medians; "
          "samples/s is wall clock, per CPU-s is over the process's CPU time (the robust one at 1 thread on a "
          "shared machine)")
    head = ("model", "M", "batch", "params ours", "params MultiVae", "ours samples/s", "MultiVae samples/s",
            "ours / MultiVae", "per CPU-s: ours", "MultiVae", "ours / MultiVae")
    table = [(r["model"], r["M"], r["batch"], f"{r['params_ours']:,}", f"{r['params_multivae']:,}",
              f"{r['ours_samples_per_s']:.1f}", f"{r['multivae_samples_per_s']:.1f}", f"{r['ratio']:.2f}x",
              f"{r['ours_samples_per_cpu_s']:.1f}", f"{r['multivae_samples_per_cpu_s']:.1f}", f"{r['ratio_cpu']:.2f}x")
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(line(t))
    print("\nper-modality networks (trainable parameters, first modality):")
    seen = set()
    for r in rows:
        key = (r["model"], r["M"])
        if key in seen:
            continue
        seen.add(key)
        same = r["enc_ours"] == r["enc_multivae"] and r["dec_ours"] == r["dec_multivae"]
        print(f"  {r['model']:7s} M={r['M']}: encoder {r['enc_ours']:,} ours / {r['enc_multivae']:,} MultiVae, "
              f"decoder {r['dec_ours']:,} / {r['dec_multivae']:,}  {'(match)' if same else '(DIFFER)'}; "
              f"whole model {r['params_ours']:,} / {r['params_multivae']:,}")
    print("\nsettings that could not be matched, or differ in how the work is done:")
    printed = set()
    for r in rows:
        for u in r["unmatched"]:
            if (r["model"], u) not in printed:
                printed.add((r["model"], u))
                print(f"  {r['model']}: {u}")
    print("  all: Adam(lr) over all parameters (ours: the Trainer's make_optimizer, fused; MultiVae: the plain "
          "torch.optim.Adam its trainer builds), zero_grad(set_to_none=True), no clipping; MultiVae has its own trainer "
          "(DataLoader, callbacks) that is not timed, as ours is not either")


if __name__ == "__main__":
    main()
