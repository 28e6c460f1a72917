"""ShaLa — fused Gaussian posterior over one shared latent + second-stage latent diffusion prior (AAAI 2026).

Card
----
Paper: J. Cui, Y. Chen, Z. Zhang, C. Klenk, "ShaLa: Multimodal Shared Latent Space
Modelling", AAAI 2026 (arXiv 2508.17376). No code is public; what the paper states is
marked [paper], everything else is our choice [ours], with why and what would change it.

Stage 1, "vae" (shared with the ablation `shala-noprior`):
- [paper] q(z | X_S) is ONE Gaussian from a fusion of deterministic per-modality
  embeddings h_m (concatenation followed by linear layers -> mean and log-variance);
  no product or mixture of experts.
- [ours] h_m = [μ-head, logvar-head] of the harness's encoder backbone for modality m
  (2D numbers, D = latent_dim), so the networks are exactly the baselines' and the two
  heads act as a linear read-out. Would change if the paper's per-modality embedding size
  or encoder differs (then a recorded backbone override).
- [ours] Any non-empty subset S: each absent modality's slot holds a learned embedding
  e_m; the M slots are concatenated and fused, c_S = f(concat_m s_m), s_m = h_m if m ∈ S
  else e_m, f = Linear(2MD -> E)-SiLU-Linear(E -> E)-SiLU with E = shala_embed_dim; then
  (μ_S, log σ²_S) = Linear(E -> 2D)(c_S). Cost linear in M; one network for all 2^M - 1
  subsets. Would change if the paper's fusion is attention or mean pooling.
- [ours] Objective, with modality dropout: per sample, S = all modalities with
  probability 1 - p, else (p = shala_modality_dropout) a random proper subset with |S|
  uniform on 1..M-1; maximise the ELBO of the observed modalities
      ELBO(X_S) = E_{q(z|X_S)}[Σ_{m∈S} log p(x_m | z)] − β KL(q(z | X_S) || N(0, I)),
  a valid bound on log p(X_S). One ELBO per sample: the cost of a plain joint VAE step.
  Laplace likelihoods (the harness's). Why only the observed ones: a first version
  reconstructed ALL modalities from X_S (as MoPoE's subset terms do); on polymnist-synth
  the other modalities' random background crops are unpredictable from X_S, the decoders
  fell back to the average image and z was ignored (quick profile: coherence at chance,
  decoded std 0.005 vs 0.117 in the data). Cross-modal generation is the diffusion
  prior's job (stage 2 maps c_S to joint latents). Would change if the paper states a
  cross-reconstruction term. `negative_bound` is −ELBO(X_{1..M}) with β = 1.
- `encode(X_S)` = μ_S (probe, and the ablation's conditional generation).

Stage 2, "prior" (stage-1 networks frozen):
- [paper] a diffusion model is fitted to the aggregated posterior of z and used as the
  prior, closing the "prior hole" between it and N(0, I).
- [ours] DDPM (Ho et al.) with v-prediction (Salimans & Ho: ε-prediction amplifies its
  errors by up to 1/sqrt(ᾱ_T) when estimating z_0, which made briefly trained latent priors
  sample ~10x too wide), linear β schedule rescaled to diffusion_T steps, on s·z with s =
  1/std of the aggregated posterior (LDM's scale factor, set at the first prior step),
  target z_0 ~ q(z | X_{1..M}) SAMPLED (not the mean): the aggregated posterior
  ∫ q(z|X) p(X) dX is exactly what the decoders were trained on; the means form a narrower
  set that would fit a different distribution. Would change if decoded samples look
  over-smoothed (fit the means instead).
- [ours] Denoiser v_θ(z_t, t, c): residual MLP (shala_denoiser_width × shala_denoiser_depth)
  with a sinusoidal time embedding and the fused embedding c_S of a random subset S per
  sample (|S| uniform on 1..M) as the condition; with probability cond_dropout c is replaced
  by a learned null token ∅. The target is always the JOINT posterior sample, so v_θ(·, c_S)
  learns p(z | X_S) = ∫ q(z | X) p(X_{-S} | X_S), and v_θ(·, ∅) the aggregated posterior.
- [ours] Sampling: DDIM (eta = shala_ddim_eta, 0 = deterministic) over sample_steps steps;
  classifier-free guidance ṽ = v_∅ + w (v_c − v_∅), w = guidance_scale (1 = the plain
  conditional model).
- `sample(n)`: z ~ p_θ(z | ∅) -> decode all. `generate(X_S, targets)`: z ~ p_θ(z | c_S) -> decode targets.

Ablation `shala-noprior`: stage 1 only; `sample` draws z ~ N(0, I), `generate` decodes
μ_S — so a leaderboard shows what the diffusion prior buys.
Known differences from the paper: harness backbones; widths, schedule and sampler are ours.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shala_bench.backbones import make_decoders, make_encoders
from shala_bench.contract import MultimodalVAE
from shala_bench.distributions import kl_to_standard_normal, reparameterize
from shala_bench.hookspecs import hookimpl
from shala_bench.plugins.latent_diffusion import Denoiser, GaussianDiffusion
from shala_bench.registry import ModelEntry


def random_subsets(B: int, M: int, k_min: int, k_max: int, device) -> Tensor:
    """Per sample a random subset of the M modalities with |S| uniform on k_min..k_max. (B, M) bool"""
    k = torch.randint(k_min, k_max + 1, (B, 1), device=device)
    ranks = torch.rand(B, M, device=device).argsort(1).argsort(1)  # a random permutation per row
    return ranks < k


class ShaLaVAE(MultimodalVAE):
    """Stage 1: per-modality embeddings h_m -> fusion -> q(z | X_S) = N(μ_S, σ²_S); Gaussian prior."""

    stages = ("vae",)
    bound_name = "elbo"

    def __init__(self, spec, protocol):
        super().__init__(spec, protocol)
        D, E, M = protocol.latent_dim, protocol.shala_embed_dim, len(self.modalities)
        self.encoders = make_encoders(spec.modalities, D)  # x_m -> (μ-head, logvar-head), read as h_m
        self.decoders = make_decoders(spec.modalities, D)
        H = 2 * D  # size of one embedding h_m
        self.absent = nn.Parameter(torch.zeros(M, H))  # e_m: the slot of a missing modality
        self.fusion = nn.Sequential(nn.Linear(M * H, E), nn.SiLU(), nn.Linear(E, E), nn.SiLU())
        self.posterior_head = nn.Linear(E, 2 * D)

    # ------------------------------------------------------------ posterior
    def embed(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Deterministic embeddings of the observed modalities: h (B, M, 2D) (zeros where absent), mask (B, M)."""
        names = self.check_subset(x)
        B = x[names[0]].shape[0]
        h = torch.zeros(B, len(self.modalities), self.absent.shape[1], device=self.device)
        mask = torch.zeros(B, len(self.modalities), dtype=torch.bool, device=self.device)
        for i, m in enumerate(self.modalities):
            if m in x:
                h[:, i] = torch.cat(self.encoders[m](x[m]), dim=-1)
                mask[:, i] = True
        return h, mask

    def fuse(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """c_S = f(concat of slots), (μ_S, log σ²_S) = head(c_S), for per-sample subsets mask (B, M)."""
        slots = torch.where(mask[..., None], h, self.absent.expand_as(h))  # (B, M, 2D)
        c = self.fusion(slots.flatten(1))  # (B, E)
        mu, logvar = self.posterior_head(c).chunk(2, dim=-1)  # (B, D) each
        return c, mu, logvar

    def posterior(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        _, mu, logvar = self.fuse(*self.embed(x))
        return mu, logvar

    def modality_dropout(self, B: int) -> Tensor:
        """S per sample: all modalities w.p. 1 - p, else a proper subset with |S| ~ U{1..M-1}. (B, M) bool"""
        M = len(self.modalities)
        full = torch.ones(B, M, dtype=torch.bool, device=self.device)
        if M < 2 or self.protocol.shala_modality_dropout <= 0:
            return full
        drop = torch.rand(B, 1, device=self.device) < self.protocol.shala_modality_dropout
        return torch.where(drop, random_subsets(B, M, 1, M - 1, self.device), full)

    def elbo(self, x: dict[str, Tensor], mu: Tensor, logvar: Tensor, beta: float,
             observed: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample ELBO from z ~ N(μ, σ²) reconstructing the observed modalities (B, M) (default all)."""
        z = reparameterize(mu, logvar)
        rec = 0.0
        for i, m in enumerate(self.modalities):
            lp = self.log_likelihood(m, x[m], self.decoders[m](z))
            rec = rec + (lp if observed is None else lp * observed[:, i].to(lp.dtype))
        kl = kl_to_standard_normal(mu, logvar)
        return rec - beta * kl, rec, kl

    # ------------------------------------------------------------ contract
    def loss(self, batch, stage="vae"):
        h, _ = self.embed(batch)
        S = self.modality_dropout(h.shape[0])
        _, mu, logvar = self.fuse(h, S)
        elbo, rec, kl = self.elbo(batch, mu, logvar, self.protocol.beta, observed=S)
        logs = {"rec": rec.mean().detach(), "kl": kl.mean().detach(), "frac_joint": S.all(1).float().mean()}
        return -elbo.mean(), logs

    def negative_bound(self, batch):
        mu, logvar = self.posterior(batch)
        return -self.elbo(batch, mu, logvar, 1.0)[0]

    def encode(self, x):
        return self.posterior(x)[0]

    def decode(self, z, modalities=None):
        return {m: self.decoders[m](z) for m in (modalities or self.modalities)}

    def sample(self, n):
        return self.decode(torch.randn(n, self.protocol.latent_dim, device=self.device))

    def generate(self, x_subset, targets):
        return self.decode(self.encode(x_subset), list(targets))


class ShaLa(ShaLaVAE):
    """Stage 1 + a conditional latent DDPM that is both the prior p(z) and p(z | X_S)."""

    stages = ("vae", "prior")

    def __init__(self, spec, protocol):
        super().__init__(spec, protocol)
        p = protocol
        self.diffusion = GaussianDiffusion(p.diffusion_T)
        self.denoiser = Denoiser(p.latent_dim, p.shala_embed_dim, p.shala_denoiser_width, p.shala_denoiser_depth,
                                 p.diffusion_T)
        # the diffusion runs on s·z with s = 1 / std of the aggregated posterior (the LDM scale factor), so the
        # schedule's noise levels mean the same whatever scale stage 1 settled on; set at the first prior step
        # and checkpointed with the model (0 = not set yet)
        self.register_buffer("z_scale", torch.zeros(()))
        self._z_scale_checked = False

    def stage_one_parameters(self) -> list[nn.Parameter]:
        skip = {id(q) for q in self.denoiser.parameters()}
        return [q for q in self.parameters() if id(q) not in skip]

    def stage_parameters(self, stage):
        return list(self.denoiser.parameters()) if stage == "prior" else self.stage_one_parameters()

    def begin_stage(self, stage):
        if stage == "prior":  # the latent space is fixed from here on: fit the prior to it
            for q in self.stage_one_parameters():
                q.requires_grad_(False)

    def loss(self, batch, stage="vae"):
        if stage == "vae":
            return super().loss(batch, stage)
        with torch.no_grad():  # latents and conditions of the frozen stage-1 networks
            h, full = self.embed(batch)
            _, mu, logvar = self.fuse(h, full)
            z0 = reparameterize(mu, logvar)  # a sample of the aggregated posterior
            S = random_subsets(h.shape[0], h.shape[1], 1, h.shape[1], self.device)
            c, _, _ = self.fuse(h, S)
            if not self._z_scale_checked:  # one host sync per process, not per step
                if float(self.z_scale) == 0:
                    self.z_scale.fill_(1.0 / float(z0.std().clamp(min=1e-3)))
                self._z_scale_checked = True
        per_sample = self.diffusion.loss(self.denoiser, self.z_scale * z0, c, self.protocol.cond_dropout)
        return per_sample.mean(), {"diffusion_mse": per_sample.mean().detach()}

    def latent_scale(self) -> float:
        return float(self.z_scale) if float(self.z_scale) > 0 else 1.0

    def prior_sample(self, n: int, c: Tensor | None = None) -> Tensor:
        """z ~ p_θ(z | c) (c = None: the unconditional prior), back on the scale of the decoders. (n, D)"""
        p = self.protocol
        zs = self.diffusion.sample(self.denoiser, n, c, p.sample_steps, p.guidance_scale, p.shala_ddim_eta)
        return zs / self.latent_scale()

    def sample(self, n):
        return self.decode(self.prior_sample(n))

    def generate(self, x_subset, targets):
        c, _, _ = self.fuse(*self.embed(x_subset))
        return self.decode(self.prior_sample(c.shape[0], c), list(targets))


NOPRIOR_CARD = """ShaLa ablation — stage 1 only: the fused-posterior VAE with the N(0, I) prior, no diffusion.

Card
----
Exactly ShaLa's stage 1 (see the `shala` card: fused Gaussian posterior from learned
absent-modality slots, ELBO with modality dropout). `sample(n)` decodes z ~ N(0, I);
`generate(X_S, targets)` decodes the posterior mean μ_S. Registered so the leaderboard
shows what the second-stage diffusion prior buys.
"""


@hookimpl
def shala_bench_register_models():
    return [ModelEntry("shala", ShaLa, __doc__), ModelEntry("shala-noprior", ShaLaVAE, NOPRIOR_CARD)]
