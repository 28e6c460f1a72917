"""Per-modality encoder/decoder networks, chosen by the harness from the modality kind.

Every model gets the same backbones, so models differ only where their papers differ
(posterior aggregation, objective, latent structure, prior). The image networks are the
PolyMNIST architecture shared by MoPoE, MMVAE+ and MultiVae, so numbers are comparable
with theirs. An encoder maps x to (mu, logvar) of size `latent_dim`; a decoder maps a
latent of size `latent_dim` to the mean of the likelihood (no output activation: the
Laplace location).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from shala_bench.data.spec import ModalitySpec
from shala_bench.errors import ProtocolError


class ImageEncoder(nn.Module):
    """Conv(3->32->64->128, k3 s2 p1) then Conv(128->D, k4) heads for mean and log-variance."""

    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
        )  # (B, 128, 4, 4)
        self.mu = nn.Conv2d(128, latent_dim, 4, 2, 0)
        self.logvar = nn.Conv2d(128, latent_dim, 4, 2, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return self.mu(h).flatten(1), self.logvar(h).flatten(1)


class ImageDecoder(nn.Module):
    """Linear(D->2048) -> 128x4x4 -> ConvT(128->64->32->3) up to 28x28."""

    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(latent_dim, 2048), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 3, 2, 1, output_padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]  # decoders accept any leading dims, e.g. (K, B, D)
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, 128, 4, 4)
        x = self.deconv(h)
        return x.view(*lead, *x.shape[1:])


def _image(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if tuple(spec.shape[1:]) != (28, 28):
        raise ProtocolError(f"image backbone expects (C, 28, 28), got {spec.shape} for modality {spec.name}")
    return ImageEncoder(latent_dim, spec.shape[0]), ImageDecoder(latent_dim, spec.shape[0])


# kind -> factory(spec, latent_dim) -> (encoder, decoder). New modality kinds register here.
BACKBONES: dict[str, Callable[[ModalitySpec, int], tuple[nn.Module, nn.Module]]] = {"image": _image}


def make_backbones(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if spec.kind not in BACKBONES:
        raise ProtocolError(f"no backbone for modality kind {spec.kind!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[spec.kind](spec, latent_dim)


def make_encoders(modalities, latent_dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({m.name: make_backbones(m, latent_dim)[0] for m in modalities})


def make_decoders(modalities, latent_dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({m.name: make_backbones(m, latent_dim)[1] for m in modalities})
