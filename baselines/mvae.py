"""MVAE — product-of-experts multimodal VAE (Wu & Goodman, NeurIPS 2018).

Card
----
Paper: M. Wu, N. Goodman, "Multimodal Generative Models for Scalable Weakly-Supervised
Learning", NeurIPS 2018.
Posterior: q(z | X_S) ∝ p(z) Π_{m∈S} q̃(z | x_m), a product of Gaussian experts that
includes the prior expert, in closed form for every subset S.
Objective (sub-sampled training, the paper's eq. 5): for each batch
    L = ELBO(X_{1..M}) + Σ_m ELBO(x_m) + Σ_{j=1..J} ELBO(X_{S_j}),
    ELBO(X_S) = E_{q(z|X_S)}[Σ_{m∈S} log p(x_m | z)] − β KL(q(z|X_S) || N(0, I)),
with J = `mvae_subsets` random subsets, drawn per sample (vectorised as masks).
Likelihood: Laplace with scale 0.75 for images, as in MoPoE / MMVAE+ (the paper used
Bernoulli on MNIST).
`paper` profile: the MoPoE PolyMNIST recipe for MVAE (shared with every model).
Known differences from the reference code: no KL annealing (β fixed by the protocol,
as for every model here); harness backbones instead of the paper's MLPs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shala_bench.backbones import make_decoders, make_encoders
from shala_bench.contract import MultimodalVAE
from shala_bench.distributions import kl_to_standard_normal, product_of_experts, reparameterize
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import ModelEntry


class MVAE(MultimodalVAE):
    def __init__(self, spec, protocol):
        super().__init__(spec, protocol)
        D = protocol.latent_dim
        self.encoders = make_encoders(spec.modalities, D)
        self.decoders = make_decoders(spec.modalities, D)

    def experts(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        return self.unimodal_experts(x)  # (|S|, B, D) x2, names

    def posterior(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mu, logvar, _ = self.experts(x)
        return product_of_experts(mu, logvar)

    def elbo_terms(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample ELBOs (B,) of the joint, the M unimodal and the J random subsets (paper eq. 5).

        Each ELBO(X_S) = Σ_{m∈S} log p(x_m | z_S) − β KL(q(z | X_S) || N(0, I)), z_S ~ q(z | X_S),
        reconstructing only what S observes. The latents of all terms are drawn first; then each
        decoder runs ONCE on the stacked latents of every term that observes its modality (one
        large call instead of up to 2 + J small ones: the same numbers, fewer, fuller kernels).
        """
        mu_e, logvar_e, _ = self.experts(x)  # all M experts, encoded once
        M, B = mu_e.shape[0], mu_e.shape[1]
        dev = mu_e.device
        ones, eye = torch.ones(M, device=dev), torch.eye(M, device=dev)
        # (term name, mask (M,) or (M, B), indices of the modalities it decodes)
        plan = [("joint", ones, range(M))] + [("unimodal", eye[i], [i]) for i in range(M)]
        draws = []  # (name, mask, decoded, z, kl), in the order their noise is drawn
        for name, mask, decoded in plan:
            draws.append((name, mask, decoded, *self._latent(mu_e, logvar_e, mask)))
        if M > 2:
            for _ in range(self.protocol.mvae_subsets):
                # a random subset per sample with 2 <= |S| <= M-1 (joint and unimodal are counted already)
                k = torch.randint(2, M, (B,), device=dev)
                ranks = torch.rand(M, B, device=dev).argsort(0).argsort(0)
                mask = (ranks < k).float()
                draws.append(("subsets", mask, range(M), *self._latent(mu_e, logvar_e, mask)))
        log_px = {}  # (term index, modality index) -> log p(x_m | z_term), (B,)
        for i, m in enumerate(self.modalities):
            users = [t for t, d in enumerate(draws) if i in d[2]]
            lp = self.log_likelihood(m, x[m], self.decoders[m](torch.stack([draws[t][3] for t in users])))  # (T, B)
            log_px.update({(t, i): lp[j] for j, t in enumerate(users)})
        terms: dict[str, Tensor] = {}
        for t, (name, mask, decoded, z, kl) in enumerate(draws):
            rec = 0.0
            for i in decoded:
                rec = rec + mask[i].to(z.dtype) * log_px[(t, i)]
            terms[name] = terms.get(name, 0.0) + rec - self.protocol.beta * kl
        return terms

    @staticmethod
    def _latent(mu_e: Tensor, logvar_e: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """z ~ q(z | X_S) for the subset `mask`, and KL(q(z | X_S) || N(0, I)) per sample."""
        mu, logvar = product_of_experts(mu_e, logvar_e, mask)
        return reparameterize(mu, logvar), kl_to_standard_normal(mu, logvar)

    # ------------------------------------------------------------ contract
    def loss(self, batch, stage="vae"):
        terms = self.elbo_terms(batch)
        total = sum(terms.values())
        logs = {f"elbo_{k}": v.mean().detach() for k, v in terms.items()}
        return -total.mean(), logs

    def negative_bound(self, batch):
        mu, logvar = self.posterior(batch)
        z = reparameterize(mu, logvar)
        rec = sum(self.log_likelihood(m, batch[m], self.decoders[m](z)) for m in self.modalities)
        return -(rec - kl_to_standard_normal(mu, logvar))

    def encode(self, x):
        return self.posterior(x)[0]

    def decode(self, z, modalities=None):
        return {m: self.decoders[m](z) for m in (modalities or self.modalities)}

    def sample(self, n):
        z = torch.randn(n, self.protocol.latent_dim, device=self.device)
        return self.decode(z)

    def generate(self, x_subset, targets):
        z = reparameterize(*self.posterior(x_subset))
        return self.decode(z, list(targets))


@hookimpl
def shala_bench_register_models():
    return [ModelEntry("mvae", MVAE, __doc__)]
