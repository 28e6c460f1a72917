"""MMVAE — mixture-of-experts multimodal VAE, stratified IWAE bound with DReG gradients (Shi et al., NeurIPS 2019).

Card
----
Paper: Y. Shi, N. Siddharth, B. Paige, P. Torr, "Variational Mixture-of-Experts
Autoencoders for Multi-Modal Deep Generative Models", NeurIPS 2019.
Reference code: github.com/iffsid/mmvae (src/objectives.py `m_dreg_looser`, src/models/mmvae.py).
Posterior: q(z | X) = (1/M) Σ_m q_m(z | x_m), a uniform mixture of the unimodal experts;
for a subset S, the mixture of the experts in S.
Objective (the paper's stratified, "looser" IWAE bound, eq. 4 with the mean over experts
outside the log), K = `MMVAEConfig.K` importance samples drawn from EACH expert:
    L = (1/M) Σ_m E_{z_m^{1..K} ~ q_m} [ log (1/K) Σ_k w(z_m^k) ],
    log w(z) = Σ_d log p(x_d | z) + β [log p(z) − log (1/M) Σ_j q_j(z | x_j)],
trained with the DReG estimator (Tucker et al. 2019; the reference's `--obj dreg --looser`):
q's parameters are detached inside log q and the path gradient into the encoders is
re-weighted by the squared normalised weights. β = 1 is the paper's bound; β = `beta`
multiplies the latent terms as MMVAE+'s reference does, so the protocol's β means the
same for MMVAE and MMVAE+ (both profiles of polymnist-synth have β = 2.5).
Prior p(z) = N(0, I); experts Gaussian (the harness backbones' (mu, logvar) heads).
Contract: encode(X_S) = mean of the mixture = average of the experts' means in S;
generate(X_S) picks one expert of S uniformly per sample, draws z from it, decodes;
sample(n) decodes z ~ p(z). Likelihood: Laplace, scale `likelihood_scale` (0.75).
Authors' recipe: the paper has no PolyMNIST run. Its MNIST-SVHN recipe (iffsid/mmvae
README.md, main.py): DReG looser, K = 30, latent 20, batch 128, 30 epochs, Adam lr 1e-3
(amsgrad), learnable prior scale, Laplace prior and posteriors, likelihood rescaled
per modality (MNIST ×3.92). The PolyMNIST recipe used for MMVAE in the field is MoPoE's
(thomassutter/MoPoE job_polymnist, --method=moe): latent 512, β 2.5, Laplace likelihood
scale 0.75, batch 256, Adam lr 5e-4, 300 epochs, K = 1 ELBO. The shared `paper` profile
of polymnist-synth follows that recipe (batch 256, lr 5e-4, β 2.5, K = 1) except the
latent size, which is the harness's shared 32 (MMVAE+'s choice), not 512.
Known differences from the reference code, and why:
- Gaussian experts and a fixed N(0, I) prior instead of Laplace with a learnable prior
  scale: the harness backbones emit (mu, logvar), and the MoPoE PolyMNIST comparison
  (whose numbers we compare against) uses Gaussian MMVAE experts.
- No per-modality likelihood rescaling: PolyMNIST modalities all have the same size.
- Adam without amsgrad (the harness's one optimizer for every model).
- β on the latent terms (see above); β = 1 recovers the reference exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shala_bench.backbones import make_decoders, make_encoders
from shala_bench.config import Config, ge, gt, inherit, setting
from shala_bench.contract import MultimodalVAE
from shala_bench.distributions import (dreg_surrogate, gaussian_log_prob, log_mean_exp, reparameterize,
                                       standard_normal_log_prob)
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import ModelEntry


@dataclass(frozen=True)
class MMVAEConfig(Config):
    K: int = setting(1, range=gt(0), doc="importance samples per expert (1: the field's PolyMNIST value)")
    beta: float | None = inherit("beta", range=ge(0), doc="β on the latent terms (None: the recipe's; 1 = the bound)")


class MMVAE(MultimodalVAE):
    bound_name = "iwae_moe_stratified"

    def __init__(self, spec, protocol, config: MMVAEConfig):
        super().__init__(spec, protocol, config)
        D = protocol.latent_dim
        self.encoders = make_encoders(spec.modalities, D)
        self.decoders = make_decoders(spec.modalities, D)

    # ------------------------------------------------------------ the mixture of experts
    def experts(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        return self.unimodal_experts(x)  # (|S|, B, D) x2, names

    @staticmethod
    def log_q_mixture(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """log (1/J) Σ_j q_j(z): z (..., B, D), experts mu/logvar (J, B, D) -> (..., B)."""
        lq = gaussian_log_prob(z.unsqueeze(-3), mu, logvar)  # (..., J, B)
        return log_mean_exp(lq, dim=-2)

    def log_weights(self, x: dict[str, Tensor], K: int, beta: float, dreg: bool) -> tuple[Tensor, Tensor]:
        """Stratified importance weights: K samples from EACH expert. Returns log w (M, K, B), z (M, K, B, D)."""
        mu, logvar, _ = self.experts({m: x[m] for m in self.modalities})  # (M, B, D)
        z = mu.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * torch.randn(
            mu.shape[0], K, *mu.shape[1:], device=mu.device, dtype=mu.dtype)  # (M, K, B, D)
        q_mu, q_lv = (mu.detach(), logvar.detach()) if dreg else (mu, logvar)  # DReG: stop-grad on phi in log q
        log_q = self.log_q_mixture(z, q_mu, q_lv)  # (M, K, B)
        log_px = sum(self.log_likelihood(m, x[m], self.decoders[m](z)) for m in self.modalities)  # (M, K, B)
        return log_px + beta * (standard_normal_log_prob(z) - log_q), z

    def bound(self, x: dict[str, Tensor], K: int, beta: float = 1.0) -> Tensor:
        """Per-sample stratified IWAE bound (B,): mean over experts of log-mean-exp over their K samples."""
        log_w, _ = self.log_weights(x, K, beta, dreg=False)
        return log_mean_exp(log_w, dim=1).mean(0)

    # ------------------------------------------------------------ contract
    def loss(self, batch, stage="vae"):
        log_w, z = self.log_weights(batch, self.config.K, self.config.beta, dreg=True)
        surrogate = dreg_surrogate(log_w, z, dim=1).mean(0)  # (B,), gradient = DReG estimate
        bound = log_mean_exp(log_w.detach(), dim=1).mean(0)
        return -surrogate.mean(), {"bound": bound.mean()}

    def negative_bound(self, batch):
        return -self.bound(batch, self.config.K)

    def encode(self, x):
        mu, _, _ = self.experts(x)
        return mu.mean(0)  # mean of a uniform mixture = average of the experts' means

    def decode(self, z, modalities=None):
        return {m: self.decoders[m](z) for m in (modalities or self.modalities)}

    def sample(self, n):
        return self.decode(torch.randn(n, self.protocol.latent_dim, device=self.device))

    def generate(self, x_subset, targets):
        mu, logvar, _ = self.experts(x_subset)  # (|S|, B, D)
        B = mu.shape[1]
        pick = torch.randint(mu.shape[0], (B,), device=mu.device)  # one expert of S per sample, uniformly
        rows = torch.arange(B, device=mu.device)
        z = reparameterize(mu[pick, rows], logvar[pick, rows])
        return self.decode(z, list(targets))


@hookimpl
def shala_bench_register_models():
    return [ModelEntry("mmvae", MMVAE, __doc__, config=MMVAEConfig, config_defaults={"smoke": {"K": 2}})]
