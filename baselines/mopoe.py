"""MoPoE-VAE — mixture over all modality subsets of products of experts, generalized ELBO (Sutter et al., ICLR 2021).

Card
----
Paper: T. M. Sutter, I. Daunhawer, J. E. Vogt, "Generalized Multimodal ELBO", ICLR 2021.
Reference code: github.com/thomassutter/MoPoE (utils/BaseMMVae.py `inference`, `poe_fusion`;
utils/utils.py `mixture_component_selection`; run_epochs.py; eval_metrics/coherence.py).
Posterior: q(z | X) = (1 / (2^M − 1)) Σ_{S ⊆ X, S ≠ ∅} q̃(z | X_S), each component a product
of the Gaussian experts in S. Prior expert: included only in the product of the FULL
subset, as the reference's `poe_fusion` does (it appends N(0, I) only when all M experts
are present); the paper's formula leaves this open, so we follow the code.
Objective (the generalized ELBO, with the KL of the mixture replaced by the mixture of
KLs, as in the paper and the reference's `calc_group_divergence_moe`):
    L = E_{S ~ U} E_{z ~ q̃(z|X_S)} [ Σ_m log p(x_m | z) ] − β (1/(2^M−1)) Σ_S KL(q̃(z|X_S) || N(0, I)).
Subsets, vectorised as a (2^M − 1, M) mask matrix (no Python loop over subsets):
- the reconstruction term is stratified over the batch like the reference's
  `mixture_component_selection`: a random permutation of the subsets is tiled over the
  batch, so each subset reconstructs ⌊B/(2^M−1)⌋ or ⌈…⌉ samples (when 2^M − 1 > B, each
  sample gets a different subset, drawn without replacement);
- the KL term is exact over all subsets for M ≤ 10 (≤ 1023 products, one batched einsum);
  for M > 10 the subsets are not enumerated: each sample draws a uniform non-empty subset
  (independent fair coins per modality, empty draws redrawn) and its KL is the unbiased
  one-sample estimate of the subset average.
Contract: encode(X_S) / generate(X_S) use q̃(z | X_S), the product of the experts in S —
the component the reference's coherence evaluation (`cond_generation` on
`inference()['subsets']`) conditions on; sample(n) decodes z ~ N(0, I).
Likelihood: Laplace, scale `likelihood_scale` (0.75, the reference's fixed decoder scale).
Authors' PolyMNIST recipe (thomassutter/MoPoE job_polymnist): method joint_elbo, class_dim
(latent) 512, style_dim 0, β 2.5, Laplace likelihood (scale 0.75, mmnist/networks/
ConvNetworksImgCMNIST.py), batch 256, Adam lr 5e-4, 300 epochs, data_multiplications 20.
The shared `paper` profile uses batch 256, lr 5e-4, β 2.5 but the harness's shared
latent size 32, not 512.
Known differences from the reference code, and why:
- Backbones: the reference encoder has an extra Linear(2048 → 512)-ReLU and linear
  heads; the harness's shared image encoder (conv heads) is used for every model.
- Which samples go to which subset is a random tiling per batch rather than fixed
  contiguous chunks (same stratification, no dependence on data order).
- M > 10: sampled subsets for the KL term (the reference enumerates all 2^M − 1, which
  is infeasible beyond ~10 modalities).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shala_bench.backbones import make_decoders, make_encoders
from shala_bench.config import Config, ge, inherit
from shala_bench.contract import MultimodalVAE
from shala_bench.distributions import kl_to_standard_normal, product_of_experts, reparameterize
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import ModelEntry

#: Up to this many modalities every subset is enumerated each step (2^10 − 1 = 1023 products).
EXACT_MAX_MODALITIES = 10


def all_subsets(M: int, device=None) -> Tensor:
    """Mask matrix (2^M − 1, M) of every non-empty subset, row s = binary digits of s + 1."""
    codes = torch.arange(1, 2**M, device=device)
    return ((codes.unsqueeze(1) >> torch.arange(M, device=device)) & 1).float()


def random_subsets(B: int, M: int, device=None) -> Tensor:
    """B masks (B, M) of uniform random non-empty subsets (fair coins, empty rows redrawn)."""
    masks = (torch.rand(B, M, device=device) < 0.5).float()
    empty = masks.sum(1) == 0
    while bool(empty.any()):
        masks[empty] = (torch.rand(int(empty.sum()), M, device=device) < 0.5).float()
        empty = masks.sum(1) == 0
    return masks


def stratified_pick(n_subsets: int, B: int, device=None) -> Tensor:
    """Subset index per sample (B,): a random permutation of the subsets tiled over the batch."""
    return torch.randperm(n_subsets, device=device)[torch.arange(B, device=device) % n_subsets]


def subset_poe(mu: Tensor, logvar: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Products of experts for many subsets at once.

    mu, logvar: (M, B, D) experts; masks: (S, M) subsets shared by the batch, or (S, M, B) per sample.
    Returns mu, logvar (S, B, D). The N(0, I) prior expert joins only the full subset (reference code).
    """
    M = mu.shape[0]
    if masks.dim() == 2:
        masks = masks.unsqueeze(-1).expand(*masks.shape, mu.shape[1])  # (S, M, B)
    precision = (-logvar).exp()  # (M, B, D)
    total = torch.einsum("smb,mbd->sbd", masks, precision)
    weighted = torch.einsum("smb,mbd->sbd", masks, mu * precision)
    full = (masks.sum(1) == M).to(mu.dtype).unsqueeze(-1)  # (S, B, 1)
    total = total + full
    return weighted / total, -torch.log(total)


@dataclass(frozen=True)
class MoPoEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="β of the mixture of KLs (None: the recipe's)")


class MoPoE(MultimodalVAE):
    bound_name = "generalized_elbo"

    def __init__(self, spec, protocol, config: MoPoEConfig):
        super().__init__(spec, protocol, config)
        D = protocol.latent_dim
        self.encoders = make_encoders(spec.modalities, D)
        self.decoders = make_decoders(spec.modalities, D)

    def experts(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        return self.unimodal_experts(x)  # (|S|, B, D) x2, names

    def subset_posterior(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """q̃(z | X_S) for the observed subset S: the product of its experts (+ prior if S is all M)."""
        mu, logvar, names = self.experts(x)
        return product_of_experts(mu, logvar, prior_expert=len(names) == len(self.modalities))

    def elbo(self, x: dict[str, Tensor], beta: float) -> Tensor:
        """Per-sample generalized ELBO (B,), subsets handled as masks."""
        mu, logvar, _ = self.experts({m: x[m] for m in self.modalities})  # (M, B, D)
        M, B = mu.shape[0], mu.shape[1]
        dev = mu.device
        rows = torch.arange(B, device=dev)
        if M <= EXACT_MAX_MODALITIES:
            masks = all_subsets(M, dev)  # (S, M)
            mu_s, lv_s = subset_poe(mu, logvar, masks)  # (S, B, D)
            pick = stratified_pick(masks.shape[0], B, dev)  # every subset reconstructs ~B/(2^M-1) samples
            z = reparameterize(mu_s[pick, rows], lv_s[pick, rows])
            kl = kl_to_standard_normal(mu_s, lv_s).mean(0)  # exact mean over all subsets, (B,)
        else:
            masks = random_subsets(B, M, dev).t().unsqueeze(0)  # (1, M, B): one subset per sample
            mu_s, lv_s = subset_poe(mu, logvar, masks)
            z = reparameterize(mu_s[0], lv_s[0])
            kl = kl_to_standard_normal(mu_s[0], lv_s[0])  # one-sample estimate of the subset mean
        rec = sum(self.log_likelihood(m, x[m], self.decoders[m](z)) for m in self.modalities)
        return rec - beta * kl

    # ------------------------------------------------------------ contract
    def loss(self, batch, stage="vae"):
        elbo = self.elbo(batch, self.config.beta)
        return -elbo.mean(), {"elbo": elbo.mean().detach()}

    def negative_bound(self, batch):
        return -self.elbo(batch, 1.0)

    def encode(self, x):
        return self.subset_posterior(x)[0]

    def decode(self, z, modalities=None):
        return {m: self.decoders[m](z) for m in (modalities or self.modalities)}

    def sample(self, n):
        return self.decode(torch.randn(n, self.protocol.latent_dim, device=self.device))

    def generate(self, x_subset, targets):
        return self.decode(reparameterize(*self.subset_posterior(x_subset)), list(targets))


@hookimpl
def shala_bench_register_models():
    return [ModelEntry("mopoe", MoPoE, __doc__, config=MoPoEConfig)]
