"""The plugin contract every model implements, so every metric and trainer works on every model.

A model sees only what the papers say it differs in: posterior aggregation, objective,
latent structure and prior. Its per-modality encoders and decoders come from the
harness (`shala_bench.backbones`), chosen by modality kind and identical for all models.

Batches are ``dict[modality, Tensor]`` of floats (images in [0, 1]); ``encode`` and
``generate`` accept any non-empty subset of the dataset's modalities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from shala_bench.data.spec import DatasetSpec
from shala_bench.distributions import laplace_log_prob
from shala_bench.errors import ProtocolError
from shala_bench.protocol import Protocol


@dataclass(frozen=True)
class StageBudget:
    """How one training stage is budgeted: at most `max_samples` training samples at learning rate `lr`,
    its best weights chosen by `selection`: "dataset" (the dataset's validation selection metric,
    DatasetEntry.selection) or "loss" (the stage's own validation bound, for a stage that cannot generate yet).
    `lr_warmup_samples` W > 0: the learning rate of the step that ends at s training samples is lr · min(1, s / W),
    a linear warm-up from lr · B / W over the stage's first W samples; 0 (the default): lr from the first step."""

    max_samples: int
    lr: float
    selection: str = "dataset"
    lr_warmup_samples: int = 0

    def __post_init__(self):
        if self.selection not in ("dataset", "loss"):
            raise ValueError(f"StageBudget.selection must be 'dataset' or 'loss', got {self.selection!r}")
        if self.lr_warmup_samples < 0:
            raise ValueError(f"StageBudget.lr_warmup_samples must be >= 0, got {self.lr_warmup_samples!r}")

    def lr_at(self, samples: int) -> float:
        """The learning rate of the step that ends at `samples` training samples of the stage."""
        if self.lr_warmup_samples <= 0:
            return self.lr
        return self.lr * min(1.0, samples / self.lr_warmup_samples)

    def share_fields(self) -> dict:
        """The fields that decide how the stage trains, for a shared stage's cache key; a field at its default
        is left out, so keys written before the field existed still match (one without a warm-up trains as
        it did then)."""
        out = dataclasses.asdict(self)
        if not self.lr_warmup_samples:
            del out["lr_warmup_samples"]
        return out


class MultimodalVAE(nn.Module):
    #: Ordered training stages; the trainer runs them in this order.
    stages: tuple[str, ...] = ("vae",)
    #: Name of the bound `loss` optimises (shown beside the test-set value in records).
    bound_name: str = "elbo"

    def __init__(self, spec: DatasetSpec, protocol: Protocol, config=None):
        super().__init__()
        self.spec = spec
        self.protocol = protocol  # the shared recipe
        self.config = config  # the model's own settings (its Config dataclass), or None when it has none
        self.modalities: list[str] = spec.names

    # ------------------------------------------------------------ the contract
    def loss(self, batch: dict[str, Tensor], stage: str = "vae") -> tuple[Tensor, dict[str, Tensor]]:
        """The model's own training objective for `stage`: (scalar to minimise, logs)."""
        raise NotImplementedError

    def encode(self, x: dict[str, Tensor]) -> Tensor:
        """Shared latent (posterior mean) from any non-empty subset of modalities. (B, D)"""
        raise NotImplementedError

    def decode(self, z: Tensor, modalities: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Means of the likelihoods of `modalities` (default all) given shared latents z."""
        raise NotImplementedError

    def sample(self, n: int) -> dict[str, Tensor]:
        """Joint (unconditional) generation of all modalities from the model's prior."""
        raise NotImplementedError

    def generate(self, x_subset: dict[str, Tensor], targets: Iterable[str]) -> dict[str, Tensor]:
        """Cross-modal generation of `targets` given the observed subset."""
        raise NotImplementedError

    # ------------------------------------------------------------ optional hooks
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """Parameters optimised in `stage` (default: all)."""
        return list(self.parameters())

    def begin_stage(self, stage: str) -> None:
        """Called before a stage trains (e.g. to freeze the stage-1 networks)."""

    def stage_share_key(self, stage: str) -> str | None:
        """What, besides the recipe, the seed and the stage's budget, decides how `stage` trains — for a stage
        that other registered models train in exactly the same way (ShaLa's variants share stage 1). Equal keys
        promise the same weights, so the trainer reuses a finished stage instead of training it again
        (trainer.Trainer, `stage_cache`). None (the default): the stage is never shared."""
        return None

    def stage_state_keys(self, stage: str) -> list[str]:
        """The state_dict entries `stage` changes (what a shared stage hands over): by default the names of
        `stage_parameters(stage)`; a stage whose training also changes buffers must add them."""
        own = {id(q) for q in self.stage_parameters(stage)}
        return [n for n, q in self.named_parameters() if id(q) in own]

    def stage_budget(self, stage: str) -> StageBudget:
        """The budget of `stage`, read by the trainer (default: the protocol's shared one for "vae")."""
        if stage == "vae":
            return StageBudget(self.protocol.max_train_samples, self.protocol.lr, "dataset")
        raise ProtocolError(f"{type(self).__name__} declares no budget for its stage {stage!r}: override stage_budget")

    def negative_bound(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-sample negative value of the model's bound on log p(x_1..x_M) (for the test-set metric)."""
        value, _ = self.loss(batch, "vae")
        return value.expand(next(iter(batch.values())).shape[0])

    # ------------------------------------------------------------ shared helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_subset(self, x: dict[str, Tensor]) -> list[str]:
        names = [m for m in self.modalities if m in x]
        unknown = set(x) - set(self.modalities)
        if unknown or not names:
            raise ProtocolError(f"expected a non-empty subset of {self.modalities}, got {sorted(x)}")
        return names

    def unimodal_experts(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[str]]:
        """Gaussian experts q(z | x_m) of the observed modalities from `self.encoders`: mu, logvar (|S|, B, D), names."""
        names = self.check_subset(x)
        stats = [self.encoders[m](x[m]) for m in names]
        return torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats]), names

    def log_likelihood(self, name: str, x: Tensor, mean: Tensor) -> Tensor:
        """log p(x_m | z) per sample, for the modality's likelihood; mean may have extra leading dims."""
        lik = self.spec.modality(name).likelihood
        if lik == "laplace":
            return laplace_log_prob(x, mean, self.protocol.likelihood_scale)
        if lik == "gaussian":
            from shala_bench.distributions import LOG2PI

            lp = -0.5 * ((x - mean).pow(2) + LOG2PI)
            return lp.flatten(start_dim=mean.dim() - x.dim() + 1).sum(-1)
        if lik == "bernoulli":
            lp = -nn.functional.binary_cross_entropy_with_logits(mean, x.expand_as(mean), reduction="none")
            return lp.flatten(start_dim=mean.dim() - x.dim() + 1).sum(-1)
        if lik == "categorical":  # x: (B, L) token ids, mean: (..., B, L, V) logits
            logp = mean.log_softmax(-1)
            idx = x.long().expand(mean.shape[:-1]).unsqueeze(-1)
            return logp.gather(-1, idx).squeeze(-1).flatten(start_dim=mean.dim() - x.dim()).sum(-1)
        raise ProtocolError(f"unknown likelihood {lik!r} for modality {name}")
