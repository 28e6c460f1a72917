"""MLD — Multi-modal Latent Diffusion: deterministic uni-modal autoencoders + one masked, multi-time diffusion over the concatenated latents (Bounoua et al., Entropy 2024).

Card
----
Paper: M. Bounoua, G. Franzese, P. Michiardi, "Multi-Modal Latent Diffusion", Entropy 26(4), 320, 2024
(arXiv 2306.04445). Reference code: github.com/MustaphaBounoua/MLD, read at commit 43de3b4:
src/models/MLD.py (`compute_loss`, `preprocess`/`standerdize`, `conditional_gen_*`, `sample`),
src/components/mm_sde.py (`VP_SDE.train_step`, `do_reverse_diffusion`, `mod_repaint`, `joint_gen`),
src/components/mlp_unet.py (`UnetMLP`: the score network, time input (B, M)), src/unimodal/BaseAE.py
(stage 1), src/eval/representation.py (the latent probe: `conditional_gen_latent_subsets`),
experiments/mmnist/mmnist_ae.py and mmnist_mld.py (the PolyMNIST recipe).
Notation: M modalities, codes z^m = e_m(x^m) of size D, Z = [z̄^1, …, z̄^M] (M·D numbers) with
z̄^m = (z^m − μ_m) / s_m standardised per dimension; A ⊆ {1..M} the modalities being generated
(diffused), C = {1..M} \\ A the conditioning ones; the multi-time vector τ(A, t)_m = t·1[m ∈ A] and the
mask m(A) over Z's dimensions.
Stage 1 ("vae"): one DETERMINISTIC autoencoder per modality, trained independently (the objectives
add, and no parameter is shared): z^m = e_m(x^m) is the MEAN head of the harness encoder (its
log-variance head is unused), x̂^m = d_m(z^m) the harness decoder,
    L_1 = Σ_m −log p(x^m | d_m(e_m(x^m)))   (+ code_l2 · Σ_m ||z^m||²; 0 = the MMNIST recipe's
    `regularization=None` in mmnist_ae.py; BaseAE offers l1/l2),
with the harness's likelihood (Laplace, scale likelihood_scale). Stage 1 selects on its validation
reconstruction loss: it cannot generate yet.
Stage 2 ("prior", stage-1 networks frozen): the per-dimension mean and std of each code are taken
from the first prior batch (as `compute_loss` does at global_step 0, `preprocess_type="modality"`,
`preprocess_op="standerdize"`) and kept in the checkpoint. Multi-time masked training (mm_sde.py
`train_step`): per sample, with probability cond_prob a random proper non-empty subset C is kept
CLEAN (τ_m = 0, z_t^m = z̄^m, no loss), A = the rest; otherwise A = all modalities (the unconditional
score). C is uniform over the 2^M − 2 proper non-empty subsets (the reference draws
`random.randint(0, len − 2)` from src/utils.py `set_subset`'s powerset, whose last entry is the full set). With t ~ U{1..T} shared by the modalities of A:
    Z_t = m(A) ⊙ (sqrt(ᾱ_t) Z + sqrt(1 − ᾱ_t) ε) + (1 − m(A)) ⊙ Z,
    L_2 = E || m(A) ⊙ (f_θ(Z_t, τ(A, t)) − target) ||² / |m(A)|,
target = v (default; see Known differences) or ε. The mean over the diffused dimensions is the
reference's rescaling of the summed loss by dim(Z) / (dim(Z) − dim(C)).
Joint generation (`sample(n)`, the reference's `joint_gen` with an empty mask): Z from noise with
τ = (t, …, t), un-standardised, each z^m decoded by d_m.
Conditional generation (`generate(X_S, targets)`, `do_reverse_diffusion`): the observed codes are
encoded, standardised and kept clean at τ_m = 0; the others start from noise and are denoised with
τ_m = t; after every reverse step the observed codes are re-imposed; the targets are decoded.
encode(X_S) (the shared latent of probes and the contract): the concatenation [z^1, …, z^M] in the
decoders' scale, the observed codes as encoded and the missing ones ONE draw of the conditional
sampler (as `conditional_gen_latent_subsets`, which the reference's latent representation evaluation
calls); for S = all modalities it is the codes themselves (deterministic). decode(Z) decodes each
slice z^m with d_m.
negative_bound: the per-sample stage-1 reconstruction loss Σ_m −log p(x^m | d_m(e_m(x^m))) on all
modalities (no ELBO exists; bound_name = "reconstruction"), so test_nll is not comparable with the
ELBO rows.
Authors' PolyMNIST recipe (mmnist_ae.py, mmnist_mld.py): per-modality latent 160, Laplace likelihood,
AEs Adam lr 1e-3, batch 128, 300 epochs; score net UnetMLP (init_dim 1536, time_dim 512, dim_mults
(1, 1), group norm 32), d = 0.2, Adam lr 1e-4, batch 256, 3000 epochs, EMA 0.999, VP-SDE β 0.1 → 20,
RePaint sampler with N = 250 Euler–Maruyama steps, jump length 10, 10 resamplings.
Known differences from the reference code, and why:
- Backbones: the harness's encoder/decoder per modality, latent size D = the recipe's latent_dim per
  modality (Z has M·D numbers), not the authors' networks and 160-d codes; the stage-1 budget and lr
  are the recipe's, shared with every model, and the autoencoders train together (same result as
  separately, up to the shared step count).
- Subset per SAMPLE (vectorised), not one subset per batch as `train_step` draws it; the same
  distribution of (A, t) per sample.
- Schedule: the harness's discrete linear β schedule (plugins/latent_diffusion.py), which at
  T = 1000 is the discretisation of the reference's VP-SDE with β_min = 0.1, β_max = 20; uniform t
  (the reference's MMNIST recipe also samples t uniformly, importance_sampling=False).
- Parameterisation: v-prediction by default (target="v"), the harness's choice for latent diffusion
  (latent_diffusion.py explains why: ε's error is amplified in ẑ_0 by briefly trained denoisers);
  target="eps" is the reference's (it trains the normalised score σ·s_θ = −ε̂).
- Sampler: DDIM with sample_steps steps (eta = ddim_eta) on the multi-time denoiser, not the
  reference's RePaint schedule of stochastic Euler–Maruyama steps with resampling jumps.
- Score network: a residual MLP (latent_diffusion.Block) with a sinusoidal embedding per modality's
  time τ_m, concatenated, not the UnetMLP (which feeds the raw (B, M) times to a Linear); no EMA of
  the weights; no attention.
- The harness encoder's log-variance head is kept (computed, unused, counted in n_params) so the
  backbones stay the shared ones.
- Standardisation statistics from the first prior batch of the harness's batch size (the reference's
  batch 256 as well).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shala_bench.backbones import make_decoders, make_encoders
from shala_bench.config import Config, ge, gt, inherit, one_of, setting, unit
from shala_bench.contract import MultimodalVAE, StageBudget
from shala_bench.errors import ProtocolError
from shala_bench.hookspecs import hookimpl
from shala_bench.plugins.latent_diffusion import Block, GaussianDiffusion, check_sampler, timestep_embedding
from shala_bench.registry import ModelEntry


@dataclass(frozen=True)
class MLDConfig(Config):
    """MLD's own settings. The paper's values are for its own networks (see the card); these are ours where
    the harness differs."""

    code_l2: float = setting(0.0, range=ge(0), doc="stage 1: weight of Σ_m ||z^m||² (0: the MMNIST recipe)")
    prior_max_samples: int | None = inherit("max_train_samples", range=gt(0),
                                            doc="cap on the prior stage's training samples (None: the recipe's)")
    prior_lr: float | None = inherit("lr", range=gt(0), doc="Adam learning rate of the prior stage (None: the recipe's)")
    cond_prob: float = setting(0.2, range=unit(False),
                               doc="d: P(a training sample keeps a random proper subset clean at τ = 0)")
    diffusion_T: int = setting(1000, range=gt(0), doc="diffusion steps of the noise schedule")
    target: str = setting("v", range=one_of("v", "eps"), doc="what the denoiser predicts (eps: the reference's)")
    denoiser_width: int = setting(512, range=gt(0), doc="residual-MLP denoiser width")
    denoiser_depth: int = setting(3, range=gt(0), doc="residual-MLP denoiser blocks")
    sample_steps: int = setting(50, range=gt(0), evaluation=True, doc="DDIM steps when sampling")
    ddim_eta: float = setting(0.0, range=unit(True), evaluation=True, doc="DDIM eta (0 deterministic, 1 ancestral)")

    def validate(self) -> None:
        super().validate()
        check_sampler(self)


SMOKE = {"diffusion_T": 50, "sample_steps": 5, "denoiser_width": 64, "denoiser_depth": 1}
QUICK = {"sample_steps": 20}


def proper_subsets(B: int, M: int, device) -> Tensor:
    """Per sample a uniform random proper non-empty subset of the M modalities (M >= 2). (B, M) bool"""
    codes = torch.randint(1, 2**M - 1, (B, 1), device=device)  # not 0 (empty), not 2^M − 1 (all)
    return ((codes >> torch.arange(M, device=device)) & 1).bool()


class MultiTimeDenoiser(nn.Module):
    """f_θ(Z_t, τ): residual MLP over the concatenated latents Z (M·D) given one time τ_m per modality
    (0 = clean, 1..T = noise levels); predicts v or ε for every dimension (only A's are used)."""

    def __init__(self, M: int, D: int, width: int, depth: int, T: int):
        super().__init__()
        self.M, self.D, self.T, self.dim = M, D, T, M * D
        self.inp = nn.Linear(M * D, width)
        self.time = nn.Sequential(nn.Linear(64 * M, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, M * D))
        nn.init.zeros_(self.out[-1].weight)  # start at f_θ = 0, as latent_diffusion.Denoiser
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z_t: Tensor, tau: Tensor) -> Tensor:
        """z_t (B, M·D), tau (B, M) ints in 0..T. (B, M·D)"""
        B = z_t.shape[0]
        emb = timestep_embedding(tau.reshape(-1), self.T).view(B, -1)  # (B, 64·M): one embedding per τ_m
        emb = nn.functional.silu(self.time(emb))
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class MLD(MultimodalVAE):
    stages = ("vae", "prior")
    bound_name = "reconstruction"

    def __init__(self, spec, protocol, config: MLDConfig):
        super().__init__(spec, protocol, config)
        M, D, c = len(self.modalities), protocol.latent_dim, config
        self.encoders = make_encoders(spec.modalities, D)  # e_m: the mean head is the code z^m
        self.decoders = make_decoders(spec.modalities, D)  # d_m
        self.diffusion = GaussianDiffusion(c.diffusion_T)
        self.denoiser = MultiTimeDenoiser(M, D, c.denoiser_width, c.denoiser_depth, c.diffusion_T)
        # per-dimension standardisation of Z (μ, s), set at the first prior step and checkpointed (s = 0: not set)
        self.register_buffer("z_mean", torch.zeros(M * D))
        self.register_buffer("z_std", torch.zeros(M * D))
        self._stats_checked = False

    # ------------------------------------------------------------ stage 1: deterministic autoencoders
    def codes(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """z^m = e_m(x^m) for the observed modalities. {m: (B, D)}"""
        return {m: self.encoders[m](x[m])[0] for m in self.check_subset(x)}

    def reconstruction(self, x: dict[str, Tensor], z: dict[str, Tensor]) -> Tensor:
        """Σ_m −log p(x^m | d_m(z^m)) per sample. (B,)"""
        return -sum(self.log_likelihood(m, x[m], self.decoders[m](z[m])) for m in z)

    # ------------------------------------------------------------ stage 2: the concatenated latent space
    def dims_of(self, mask: Tensor) -> Tensor:
        """A per-modality mask (B, M) spread over Z's dimensions. (B, M·D)"""
        return mask.repeat_interleave(self.protocol.latent_dim, dim=1)

    def scale(self) -> Tensor:
        """s per dimension (1 until the statistics are set), without a host sync. (M·D,)"""
        return torch.where(self.z_std > 0, self.z_std, torch.ones_like(self.z_std))

    def standardise(self, z: Tensor) -> Tensor:
        return (z - self.z_mean) / self.scale()

    def unstandardise(self, zbar: Tensor) -> Tensor:
        return zbar * self.scale() + self.z_mean

    def multi_time_loss(self, Z: Tensor, A: Tensor, t: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        """Per-sample masked loss (B,) on standardised Z (B, M·D) with diffused modalities A (B, M) bool:
        ||m(A) ⊙ (f_θ(Z_t, τ(A, t)) − target)||² / |m(A)|, t ~ U{1..T} (1-based: τ = 0 means clean)."""
        B = Z.shape[0]
        t = torch.randint(1, self.diffusion.T + 1, (B,), device=Z.device) if t is None else t
        eps = torch.randn_like(Z) if eps is None else eps
        mask = self.dims_of(A).to(Z.dtype)  # m(A)
        ab = self.diffusion.alpha_bar[t - 1][:, None]
        Z_t = mask * (ab.sqrt() * Z + (1 - ab).sqrt() * eps) + (1 - mask) * Z
        tau = torch.where(A, t[:, None], torch.zeros_like(t)[:, None])  # τ(A, t), (B, M)
        target = ab.sqrt() * eps - (1 - ab).sqrt() * Z if self.config.target == "v" else eps
        err = (self.denoiser(Z_t, tau) - target).pow(2) * mask
        return err.sum(1) / mask.sum(1)

    def diffused_sets(self, B: int) -> Tensor:
        """A per sample: all modalities w.p. 1 − cond_prob, else the complement of a random proper subset C. (B, M)"""
        M = len(self.modalities)
        full = torch.ones(B, M, dtype=torch.bool, device=self.device)
        if M < 2 or self.config.cond_prob <= 0:
            return full
        cond = torch.rand(B, 1, device=self.device) < self.config.cond_prob
        return torch.where(cond, ~proper_subsets(B, M, self.device), full)

    @torch.no_grad()
    def reverse(self, Z_obs: Tensor, keep: Tensor) -> Tensor:
        """Standardised Z with the modalities in `keep` (B, M) fixed to Z_obs (B, M·D) at τ = 0 and the rest
        denoised from noise by DDIM; the kept codes are re-imposed after every step. (B, M·D)"""
        p, B = self.config, Z_obs.shape[0]
        kept = self.dims_of(keep)
        Z = torch.where(kept, Z_obs, torch.randn_like(Z_obs))
        for t, ab, ab_prev, last in self.diffusion.levels(p.sample_steps):
            tau = torch.where(keep, torch.zeros_like(keep, dtype=torch.long), t + 1)  # 1-based level of A
            out = self.denoiser(Z, tau)
            if p.target == "v":
                z0, eps = ab.sqrt() * Z - (1 - ab).sqrt() * out, (1 - ab).sqrt() * Z + ab.sqrt() * out
            else:
                z0, eps = (Z - (1 - ab).sqrt() * out) / ab.sqrt(), out
            Z = torch.where(kept, Z_obs, self.diffusion.ddim_step(z0, eps, ab, ab_prev, p.ddim_eta, last))
        return Z

    def conditional_latent(self, x_subset: dict[str, Tensor]) -> Tensor:
        """[z^1, …, z^M] in the decoders' scale: the observed codes, the missing ones drawn from p(Z_A | Z_C). (B, M·D)"""
        z = self.codes(x_subset)
        B, D = next(iter(z.values())).shape
        keep = torch.tensor([m in z for m in self.modalities], device=self.device).expand(B, -1)
        Z = torch.cat([z[m] if m in z else torch.zeros(B, D, device=self.device) for m in self.modalities], 1)
        if bool(keep.all()):
            return Z
        return self.unstandardise(self.reverse(self.standardise(Z), keep))

    # ------------------------------------------------------------ stages
    def stage_parameters(self, stage):
        if stage == "prior":
            return list(self.denoiser.parameters())
        return [q for name, q in self.named_parameters() if not name.startswith("denoiser.")]

    def begin_stage(self, stage):
        if stage == "prior":  # the latent space is fixed from here on
            for name, q in self.named_parameters():
                if not name.startswith("denoiser."):
                    q.requires_grad_(False)

    def stage_budget(self, stage):
        if stage == "prior":
            return StageBudget(self.config.prior_max_samples, self.config.prior_lr, "dataset")
        return StageBudget(self.protocol.max_train_samples, self.protocol.lr, "loss")  # cannot generate yet

    def loss(self, batch, stage="vae"):
        if stage == "vae":
            z = self.codes({m: batch[m] for m in self.modalities})
            rec = self.reconstruction(batch, z)
            l2 = sum(v.pow(2).sum(1) for v in z.values())
            return (rec + self.config.code_l2 * l2).mean(), {"rec": rec.mean().detach(), "code_l2": l2.mean().detach()}
        with torch.no_grad():  # codes of the frozen autoencoders
            z = self.codes({m: batch[m] for m in self.modalities})
            Z = torch.cat([z[m] for m in self.modalities], 1)
            if not self._stats_checked:  # one host sync per process, not per step
                if float(self.z_std.max()) == 0:
                    self.z_mean.copy_(Z.mean(0))
                    self.z_std.copy_(Z.std(0).clamp(min=1e-3))
                self._stats_checked = True
            A = self.diffused_sets(Z.shape[0])
        per_sample = self.multi_time_loss(self.standardise(Z), A)
        return per_sample.mean(), {"diffusion_mse": per_sample.mean().detach(),
                                   "frac_joint": A.all(1).float().mean()}

    # ------------------------------------------------------------ contract
    def negative_bound(self, batch):
        return self.reconstruction(batch, self.codes({m: batch[m] for m in self.modalities}))

    def encode(self, x):
        return self.conditional_latent(x)

    def decode(self, z, modalities=None):
        D = self.protocol.latent_dim
        index = {m: i for i, m in enumerate(self.modalities)}
        return {m: self.decoders[m](z[..., index[m] * D:(index[m] + 1) * D]) for m in (modalities or self.modalities)}

    def sample(self, n):
        M, D = len(self.modalities), self.protocol.latent_dim
        none = torch.zeros(n, M, dtype=torch.bool, device=self.device)
        Z = self.reverse(torch.zeros(n, M * D, device=self.device), none)
        return self.decode(self.unstandardise(Z))

    def generate(self, x_subset, targets):
        return self.decode(self.conditional_latent(x_subset), list(targets))


@hookimpl
def shala_bench_register_models():
    return [ModelEntry("mld", MLD, __doc__, config=MLDConfig, config_defaults={"smoke": SMOKE, "quick": QUICK})]
