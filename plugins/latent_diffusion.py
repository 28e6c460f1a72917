"""DDPM machinery over a shared latent z: schedule, forward noising, a conditional MLP denoiser,
condition dropout, classifier-free guidance and DDIM / ancestral sampling.

Notation (Ho et al. 2020; Song et al. 2021 for DDIM):
    q(z_t | z_{t-1}) = N(sqrt(1 - β_t) z_{t-1}, β_t I),   ᾱ_t = Π_{s<=t} (1 - β_s),
    q(z_t | z_0)     = N(sqrt(ᾱ_t) z_0, (1 - ᾱ_t) I),      z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε,
    the network predicts v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) z_0 (Salimans & Ho 2022), from which
    ẑ_0 = sqrt(ᾱ_t) z_t − sqrt(1 − ᾱ_t) v̂ and ε̂ = sqrt(1 − ᾱ_t) z_t + sqrt(ᾱ_t) v̂. Why v and not ε:
    with ε-prediction ẑ_0 = (z_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t) multiplies the error of ε̂ by up to
    1 / sqrt(ᾱ_T) ≈ 150, and a briefly trained 32-d denoiser then samples latents ~10x too wide;
    with v the error of ẑ_0 is the error of v̂ at every t.
    training: E_{t, ε} || v − v_θ(z_t, t, c) ||²  with c replaced by a learned null token with
    probability `cond_dropout`, so one v_θ is both p(z) (c = ∅) and p(z | c);
    guidance (Ho & Salimans 2022): ṽ = v_θ(z_t, t, ∅) + w (v_θ(z_t, t, c) − v_θ(z_t, t, ∅)) (the same
    as guiding ε, since ε̂ is affine in v̂ at fixed z_t).
posterior sampling without training (Chung et al. 2023, DPS; Song et al. 2021, predictor-corrector):
    p(z | y) ∝ p_θ(z) p(y | z) from the unconditional denoiser and any differentiable log-likelihood.
Time steps are 0-based here: t = 0 is the first noising step, t = T - 1 the last.
Nothing in this file knows about modalities; the model passes z_0 and the condition c.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def check_sampler(config) -> None:
    """ProtocolError unless a config's DDIM `sample_steps` fit its schedule's `diffusion_T` (a plugin's
    Config.validate calls this: ShaLa's and MLD's priors share the schedule and the sampler)."""
    from shala_bench.errors import ProtocolError

    if config.sample_steps > config.diffusion_T:
        raise ProtocolError(f"{config.namespace_hint()}sample_steps={config.sample_steps} must be <= "
                            f"diffusion_T={config.diffusion_T}")


def linear_betas(T: int) -> Tensor:
    """β_1..β_T of Ho et al. (1e-4 .. 0.02 at T = 1000), rescaled by 1000 / T as in Nichol & Dhariwal,
    so that ᾱ_T ≈ 4e-5 (z_T ≈ pure noise) for any number of steps T."""
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype=torch.float64)


def timestep_embedding(t: Tensor, T: int, dim: int = 64) -> Tensor:
    """Sinusoidal embedding of integer steps t (B,), on a 0..1000 scale whatever T is. (B, dim)"""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = (t.float() * (1000.0 / T))[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class Block(nn.Module):
    """Pre-norm residual MLP block; the time/condition embedding is added inside the block."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class Denoiser(nn.Module):
    """v_θ(z_t, t, c): residual MLP over z with embeddings of t and of the condition c.

    c is any vector (for ShaLa, the fused embedding of the observed modalities); a learned
    null token ∅ stands in for it where the condition is dropped or absent.
    """

    def __init__(self, dim: int, cond_dim: int, width: int = 256, depth: int = 3, T: int = 1000):
        super().__init__()
        self.dim, self.cond_dim, self.T = dim, cond_dim, T
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Linear(cond_dim, width) if cond_dim > 0 else None
        self.null = nn.Parameter(torch.zeros(max(cond_dim, 1)))  # ∅, in the space of c
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)  # start as v_θ = 0: a stable first step
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z_t: Tensor, t: Tensor, c: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """z_t (B, D), t (B,) ints, c (B, C) or None (= ∅ for all), drop (B,) bool: use ∅ there."""
        emb = self.time(timestep_embedding(t, self.T))  # (B, W)
        if self.cond is not None:
            null = self.null.expand(z_t.shape[0], -1)
            if c is None:
                c = null
            elif drop is not None:
                c = torch.where(drop[:, None], null, c)
            emb = emb + self.cond(c)
        emb = nn.functional.silu(emb)
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class GaussianDiffusion(nn.Module):
    """The fixed forward process q and the samplers; holds no learned parameters."""

    def __init__(self, T: int):
        super().__init__()
        self.T = T
        betas = linear_betas(T)
        alpha_bar = torch.cumprod(1.0 - betas, 0)
        # schedule buffers are recomputed from T, so they stay out of checkpoints
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    # ------------------------------------------------------------ forward process
    def q_mean_var(self, z0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Closed form of q(z_t | z_0): mean sqrt(ᾱ_t) z_0 and variance (1 - ᾱ_t) (per dimension)."""
        ab = self.alpha_bar[t][:, None]
        return ab.sqrt() * z0, (1.0 - ab).expand_as(z0)

    def q_sample(self, z0: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        """z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε."""
        eps = torch.randn_like(z0) if eps is None else eps
        ab = self.alpha_bar[t][:, None]
        return ab.sqrt() * z0 + (1.0 - ab).sqrt() * eps

    # ------------------------------------------------------------ training
    def loss(self, model: Denoiser, z0: Tensor, c: Tensor | None = None, cond_dropout: float = 0.0) -> Tensor:
        """Per-sample v-prediction loss, mean over latent dims. (B,)"""
        B = z0.shape[0]
        t = torch.randint(0, self.T, (B,), device=z0.device)
        eps = torch.randn_like(z0)
        drop = torch.rand(B, device=z0.device) < cond_dropout if c is not None else None
        ab = self.alpha_bar[t][:, None]
        v = ab.sqrt() * eps - (1.0 - ab).sqrt() * z0
        pred = model(self.q_sample(z0, t, eps), t, c, drop)
        return (pred - v).pow(2).mean(-1)

    # ------------------------------------------------------------ sampling
    def guided_v(self, model: Denoiser, z: Tensor, t: Tensor, c: Tensor | None, w: float) -> Tensor:
        if c is None:
            return model(z, t, None)
        if w == 1.0:  # plain conditional model: one pass
            return model(z, t, c)
        B = z.shape[0]
        both = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([c, c]),
                         torch.cat([torch.zeros(B, dtype=torch.bool, device=z.device),
                                    torch.ones(B, dtype=torch.bool, device=z.device)]))
        cond, uncond = both[:B], both[B:]
        return uncond + w * (cond - uncond)

    def timesteps(self, steps: int, device) -> Tensor:
        """`steps` evenly spaced steps from T - 1 down to 0 (the DDIM sub-sequence)."""
        return torch.linspace(self.T - 1, 0, min(steps, self.T), device=device).round().long().unique_consecutive()

    def ddim_step(self, z0: Tensor, eps: Tensor, ab: Tensor, ab_prev: Tensor, eta: float, last: bool) -> Tensor:
        """z_{t'} from the predictions ẑ_0, ε̂ at level t (Song et al. 2021, eq. 12), t' the next level."""
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
        z = ab_prev.sqrt() * z0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and not last:
            z = z + sigma * torch.randn_like(z)
        return z

    def levels(self, steps: int):
        """The sampler's noise levels, high to low: (t, ᾱ_t, ᾱ of the next level (1 after the last), last?)."""
        device = self.alpha_bar.device
        ts = self.timesteps(steps, device)
        for i, t in enumerate(ts):
            last = i + 1 == len(ts)
            yield t, self.alpha_bar[t], torch.ones((), device=device) if last else self.alpha_bar[ts[i + 1]], last

    @torch.no_grad()
    def sample(self, model: Denoiser, n: int, c: Tensor | None = None, steps: int = 50,
               guidance: float = 1.0, eta: float = 0.0) -> Tensor:
        """z_0 ~ p_θ(z | c) with DDIM over `steps` evenly spaced steps (eta = 0: deterministic DDIM;
        eta = 1 with steps = T: ancestral DDPM sampling). c = None: the unconditional prior. (n, D)"""
        z = torch.randn(n, model.dim, device=self.alpha_bar.device)
        for t, ab, ab_prev, last in self.levels(steps):
            v = self.guided_v(model, z, t.expand(n), c, guidance)
            z0 = ab.sqrt() * z - (1 - ab).sqrt() * v  # ẑ_0 and ε̂ from v̂
            eps = (1 - ab).sqrt() * z + ab.sqrt() * v
            z = self.ddim_step(z0, eps, ab, ab_prev, eta, last)
        return z

    # ------------------------------------------------------------ posterior sampling (training-free)
    def posterior_eps(self, model: Denoiser, z: Tensor, t: Tensor, log_lik, weight: float) -> tuple[Tensor, Tensor]:
        """ẑ_0 and ε̂ of the posterior p_t(z_t | y) ∝ p_t(z_t) p(y | z_t), with DPS's approximation
        p(y | z_t) ≈ p(y | ẑ_0(z_t)) (Chung et al. 2023): the score gains w ∇_{z_t} log p(y | ẑ_0(z_t)),
        i.e. ε̂ <- ε̂ − w sqrt(1 − ᾱ_t) ∇ (the classifier-guidance form, Dhariwal & Nichol 2021).
        `log_lik(ẑ_0)` returns per-sample log-likelihoods (n,); w = 1 is the approximate posterior."""
        ab = self.alpha_bar[t]
        with torch.enable_grad():  # evaluation runs under no_grad; the gradient is w.r.t. z_t only
            zg = z.detach().requires_grad_(True)
            v = model(zg, t.expand(z.shape[0]), None)
            z0 = ab.sqrt() * zg - (1 - ab).sqrt() * v
            (grad,) = torch.autograd.grad(log_lik(z0).sum(), zg)
        v = v.detach()
        eps = (1 - ab).sqrt() * z + ab.sqrt() * v - weight * (1 - ab).sqrt() * grad
        return (z - (1 - ab).sqrt() * eps) / ab.sqrt(), eps

    def posterior_sample(self, model: Denoiser, n: int, log_lik, steps: int = 50, weight: float = 1.0,
                         eta: float = 0.0, langevin: int = 0, snr: float = 0.16) -> Tensor:
        """z_0 ~ p(z | y) ∝ p_θ(z) p(y | z) with the unconditional denoiser, no training. (n, D)

        Predictor: DDIM steps on the DPS posterior score (`posterior_eps`); langevin = 0 is plain DPS.
        Corrector (annealed Langevin, Song et al. 2021's predictor-corrector sampler): before each
        predictor step, `langevin` steps z <- z + δ s + sqrt(2δ) ξ at that level with the posterior score
        s = −ε̂ / sqrt(1 − ᾱ_t) and δ = 2 (snr ‖ξ‖ / ‖s‖)², norms averaged over the batch."""
        z = torch.randn(n, model.dim, device=self.alpha_bar.device)
        for t, ab, ab_prev, last in self.levels(steps):
            for _ in range(langevin):
                _, eps = self.posterior_eps(model, z, t, log_lik, weight)
                score, noise = -eps / (1 - ab).sqrt(), torch.randn_like(z)
                # one step size per level from the batch's mean norms, as Song et al.'s code does: a per-sample
                # ratio gives huge steps where ‖s‖ happens to be small, and the chain then diverges
                delta = 2 * (snr * noise.norm(dim=-1).mean() / score.norm(dim=-1).mean().clamp(min=1e-12)) ** 2
                z = (z + delta * score + (2 * delta).sqrt() * noise).detach()
            z0, eps = self.posterior_eps(model, z, t, log_lik, weight)
            z = self.ddim_step(z0, eps, ab, ab_prev, eta, last).detach()
        return z
