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
with J = `MVAEConfig.subsets` random subsets, drawn per sample (vectorised as masks).
Likelihood: Laplace with scale 0.75 for images, as in MoPoE / MMVAE+ (the paper used
Bernoulli on MNIST).
KL warm-up (`MVAEConfig.kl_warmup`): the reference code (mhw32/multimodal-vae-public,
mnist/train.py) multiplies every KL term by a factor that rises linearly per minibatch,
(n + 1) / N over the first N minibatches, for its first 200 of 500 epochs, then stays 1.
Here the factor is (samples seen + B) / (kl_warmup · max_train_samples), capped at 1, so the
warm-up is the same fraction of the stage's budget at any batch size; it multiplies β.
`paper` profile: the MoPoE PolyMNIST recipe for MVAE (shared with every model) with the
reference's warm-up over 40 % of the budget. `quick`: a warm-up over 61,440 samples, chosen on the
validation split at M = 2, seed 0 (benchmarks/results/mvae_warmup/), under the recipe whose cap was
1,228,800 samples: without one, under the quick recipe's β = 2.5, every expert collapsed to the prior
and the validation k = 1 coherence stayed at chance (0.100) to the cap; warm-ups of 0.02 / 0.05 / 0.1 /
0.3 of that cap reached 0.725 / 0.727 / 0.585 / 0.520 (a longer warm-up let the plateau stop pick a
checkpoint from before β reached 2.5). Under a plateau stop the cap is not the run's length, so the
warm-up keeps its length in samples: kl_warmup is 61,440 / max_train_samples (1/60 of the 3,686,400 cap).
Learning-rate warm-up (`MVAEConfig.lr_warmup_samples`; not in the reference, `quick` only): the rate rises
linearly to the recipe's over the first 128,000 samples (500 steps of 256). Without it, seed 1 at M = 2 had
its two experts raise their log-variance to ~60 within 25 Adam steps (lr 1e-3): the product of experts is
then the prior expert alone, no gradient reaches the encoders through exp(−logvar) again, and the validation
k = 1 coherence stayed at chance (0.100) to 1.7M samples whatever the KL warm-up, also with the KL weight 0
(benchmarks/results/mvae_warmup/). Chosen on the validation split over seeds 0–2 at M = 2: best balanced
k = 1 0.653 / 0.720 / 0.691 (seeds 0 / 1 / 2) with it, 0.727 / 0.100 / 0.547 without; it applies to every seed.
Known differences from the reference code: harness backbones instead of the paper's MLPs; the quick
profile's learning-rate warm-up; the test-split bound is always the β = 1 ELBO.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from shala_bench.backbones import make_decoders, make_encoders
from shala_bench.config import Config, ge, inherit, setting, unit
from shala_bench.contract import MultimodalVAE, StageBudget
from shala_bench.distributions import kl_to_standard_normal, product_of_experts, reparameterize
from shala_bench.hookspecs import hookimpl
from shala_bench.data.polymnist_synth import PROFILES as POLYMNIST_SYNTH_PROFILES
from shala_bench.registry import ModelEntry


QUICK_WARMUP_SAMPLES = 61_440  # the warm-up chosen on validation for the quick profile (see the card)
QUICK_LR_WARMUP_SAMPLES = 128_000  # the learning-rate warm-up chosen on validation for it (see the card)
# read from the dataset's profile, not repeated here, so a change of that cap keeps the warm-up's length
QUICK_CAP = POLYMNIST_SYNTH_PROFILES["quick"]["max_train_samples"]


@dataclass(frozen=True)
class MVAEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="β of every ELBO term (None: the recipe's)")
    subsets: int = setting(1, range=ge(0), doc="J: random-subset ELBOs per step besides joint and unimodal")
    kl_warmup: float = setting(0.0, range=unit(True),
                               doc="fraction of the stage's max_train_samples over which the KL weight rises "
                                   "linearly from 0 to β (the reference's annealing); 0 = none")
    lr_warmup_samples: int = setting(0, range=ge(0),
                                     doc="training samples over which the learning rate rises linearly to the "
                                         "recipe's (StageBudget.lr_warmup_samples); 0 = none, as in the reference")


class MVAE(MultimodalVAE):
    def __init__(self, spec, protocol, config: MVAEConfig):
        super().__init__(spec, protocol, config)
        D = protocol.latent_dim
        self.encoders = make_encoders(spec.modalities, D)
        self.decoders = make_decoders(spec.modalities, D)
        if config.kl_warmup > 0:
            # training samples seen, in the state dict so a resumed run continues the same schedule; an integer,
            # so .to(dtype) leaves it exact; registered only with a warm-up, so other checkpoints keep their keys
            self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))

    def kl_weight(self, batch_size: int) -> float | Tensor:
        """β times the warm-up factor of the current minibatch (the reference's (n + 1) / N form)."""
        if self.config.kl_warmup <= 0 or not self.training:
            return self.config.beta
        span = self.config.kl_warmup * self.protocol.max_train_samples
        # a tensor, so the schedule never syncs with the host
        return self.config.beta * ((self.samples_seen + batch_size) / span).clamp(max=1.0).float()

    def stage_budget(self, stage: str) -> StageBudget:
        budget = super().stage_budget(stage)
        return dataclasses.replace(budget, lr_warmup_samples=self.config.lr_warmup_samples)

    def experts(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        return self.unimodal_experts(x)  # (|S|, B, D) x2, names

    def posterior(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mu, logvar, _ = self.experts(x)
        return product_of_experts(mu, logvar)

    def elbo(self, x: dict[str, Tensor], mu_e: Tensor, logvar_e: Tensor, mask: Tensor, decoded: list[int],
             beta: float | Tensor) -> Tensor:
        """Per-sample ELBO of the subset given by mask (M, B) or (M,): reconstruct only what is observed.

        `decoded` lists the modality indices that can be observed in the mask, so no
        decoder runs for a modality that is masked out everywhere.
        """
        mu, logvar = product_of_experts(mu_e, logvar_e, mask)
        z = reparameterize(mu, logvar)
        rec = 0.0
        for i in decoded:
            m = self.modalities[i]
            rec = rec + mask[i].to(z.dtype) * self.log_likelihood(m, x[m], self.decoders[m](z))
        return rec - beta * kl_to_standard_normal(mu, logvar)

    def elbo_terms(self, x: dict[str, Tensor], beta: float | Tensor) -> dict[str, Tensor]:
        mu_e, logvar_e, _ = self.experts(x)  # all M experts, encoded once
        M, B = mu_e.shape[0], mu_e.shape[1]
        dev = mu_e.device
        every = list(range(M))
        terms = {"joint": self.elbo(x, mu_e, logvar_e, torch.ones(M, device=dev), every, beta)}
        eye = torch.eye(M, device=dev)
        terms["unimodal"] = sum(self.elbo(x, mu_e, logvar_e, eye[i], [i], beta) for i in range(M))
        if M > 2:
            for _ in range(self.config.subsets):
                # a random subset per sample with 2 <= |S| <= M-1 (joint and unimodal are counted already)
                k = torch.randint(2, M, (B,), device=dev)
                ranks = torch.rand(M, B, device=dev).argsort(0).argsort(0)
                mask = (ranks < k).float()
                terms["subsets"] = terms.get("subsets", 0.0) + self.elbo(x, mu_e, logvar_e, mask, every, beta)
        return terms

    # ------------------------------------------------------------ contract
    def loss(self, batch, stage="vae"):
        B = next(iter(batch.values())).shape[0]
        beta = self.kl_weight(B)  # once per step: every ELBO term and the log use this one weight
        terms = self.elbo_terms(batch, beta)
        total = sum(terms.values())
        logs = {f"elbo_{k}": v.mean().detach() for k, v in terms.items()}
        if self.config.kl_warmup > 0 and self.training:
            logs["kl_weight"] = beta.detach()
            self.samples_seen += B
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
    # paper: the reference anneals the KL over its first 200 of 500 epochs (mnist/train.py, --annealing-epochs);
    # quick: 61,440 samples, chosen on validation (see the card), as a fraction of polymnist-synth's quick cap
    # (the data it was chosen on; on another dataset's quick cap it is the same fraction, not the same length);
    # quick's learning-rate warm-up, in samples, was chosen on validation too (see the card)
    return [ModelEntry("mvae", MVAE, __doc__, config=MVAEConfig,
                       config_defaults={"paper": {"kl_warmup": 0.4},
                                        "quick": {"kl_warmup": QUICK_WARMUP_SAMPLES / QUICK_CAP,
                                                  "lr_warmup_samples": QUICK_LR_WARMUP_SAMPLES}})]
