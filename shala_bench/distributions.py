"""Densities and posterior algebra shared by the models (all in closed form, batched)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG2PI = math.log(2 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dim."""
    return -0.5 * (LOG2PI + logvar + (z - mu).pow(2) * (-logvar).exp()).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (LOG2PI + z.pow(2)).sum(-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the last dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def laplace_log_prob(x: Tensor, loc: Tensor, scale: float | Tensor) -> Tensor:
    """log Laplace(x; loc, scale), summed over all but the leading batch dims of x.

    x has shape (B, *event); loc may carry extra leading dims, e.g. (K, B, *event).
    """
    scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device)
    lp = -(x - loc).abs() / scale - torch.log(2 * scale)
    return lp.flatten(start_dim=loc.dim() - x.dim() + 1).sum(-1)


def laplace_log_prob_latent(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log Laplace(z; loc, scale) with per-dimension scales, summed over the last dim."""
    return (-(z - loc).abs() / scale - torch.log(2 * scale)).sum(-1)


def product_of_experts(mu: Tensor, logvar: Tensor, mask: Tensor | None = None, prior_expert: bool = True):
    """Product of Gaussian experts, optionally with the N(0, I) prior expert.

    mu, logvar: (M, B, D) unimodal experts; mask: (M, B) or (M,) with 1 where the expert
    is present. Returns the Gaussian proportional to the product:
    precision T = [1 +] sum_m mask_m / var_m, mean = (sum_m mask_m mu_m / var_m) / T.
    """
    precision = (-logvar).exp()
    if mask is not None:
        m = mask.to(mu.dtype)
        while m.dim() < mu.dim():
            m = m.unsqueeze(-1)
        precision = precision * m
    total = precision.sum(0)
    weighted = (mu * precision).sum(0)
    if prior_expert:
        total = total + 1.0
    out_mu = weighted / total
    return out_mu, -torch.log(total)


# ---------------------------------------------------------------- importance weighting (MMVAE, MMVAE+)
def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """log (1/n) sum_i exp(x_i) along `dim`, computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def dreg_surrogate(log_w: Tensor, z: Tensor, dim: int) -> Tensor:
    """Surrogate whose gradient is the DReG estimator of the IWAE bound log mean_k exp(log_w_k).

    Tucker, Lawson, Gu, Maddison, "Doubly Reparameterized Gradient Estimators", ICLR 2019.
    `log_w` (..., K along `dim`, ...) must be computed from the reparameterised samples `z`
    (log_w's shape, optionally plus a trailing latent dim) with the variational density's parameters
    detached (stop-gradient on phi inside log q). With normalised weights w~_k:
      decoder (theta):  sum_k w~_k d log_w_k / d theta          (the IWAE gradient)
      encoder (phi):    sum_k w~_k^2 d log_w_k / d z_k  dz_k / d phi   (score term dropped)
    The surrogate's value is sum_k w~_k log_w_k, not the bound; report the bound separately.
    """
    w = torch.softmax(log_w.detach(), dim)
    if z.requires_grad:  # scales the path gradient into the encoder by a second w~_k
        w_z = w.unsqueeze(-1) if z.dim() == w.dim() + 1 else w
        z.register_hook(lambda grad: grad * w_z.to(grad.dtype))  # dtype-safe under bf16 autocast
    return (w * log_w).sum(dim)


def laplace_rsample(loc: Tensor, scale: Tensor, sample_shape: tuple = ()) -> Tensor:
    """Reparameterised Laplace samples loc + scale * eps, eps ~ Laplace(0, 1)."""
    return torch.distributions.Laplace(loc, scale).rsample(torch.Size(sample_shape))
