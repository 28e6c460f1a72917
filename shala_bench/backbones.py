"""Per-modality encoder/decoder networks, chosen by the harness from the modality kind.

Every model gets the same backbones, so models differ only where their papers differ
(posterior aggregation, objective, latent structure, prior). The image networks are the
PolyMNIST architecture shared by MoPoE, MMVAE+ and MultiVae, so numbers are comparable
with theirs. An encoder maps x to (mu, logvar) of size `latent_dim`; a decoder maps a
latent of size `latent_dim` to the mean of the likelihood (no output activation: the
Laplace location). Every encoder is `heads(features(x))`: `features` is its trunk (what the
mean and log-variance heads read), so a model may put heads of its own on the same trunk.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from shala_bench.data.spec import ModalitySpec
from shala_bench.errors import ProtocolError


def conv_heads(h: Tensor, mu: nn.Conv2d, logvar: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """The mean and log-variance conv heads of an image encoder, evaluated as ONE matmul.

    Each head is a Conv2d whose kernel covers the whole 4x4 feature map (output 1x1), i.e. a
    linear map of the flattened (C, 4, 4) features with weight.view(D, C*16). As a convolution
    oneDNN runs it at ~11 GFLOP/s on one thread; as one Linear over both heads' stacked weights
    it runs 3-8x faster (batch 32-256). Same parameters and state dict; the same numbers up to
    float summation order. Any other feature-map size falls back to the convolutions.
    """
    if h.shape[-2:] != mu.weight.shape[-2:] or mu.padding != (0, 0):
        return mu(h).flatten(1), logvar(h).flatten(1)
    weight = torch.cat([mu.weight, logvar.weight]).flatten(1)  # (2D, C*kh*kw)
    bias = torch.cat([mu.bias, logvar.bias])
    out = nn.functional.linear(h.flatten(1), weight, bias)  # (B, 2D)
    return out[:, :mu.out_channels], out[:, mu.out_channels:]


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

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)  # (B, 128, 4, 4): what the heads read

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return conv_heads(h, self.mu, self.logvar)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.features(x))


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


class Image64Encoder(nn.Module):
    """The PolyMNIST encoder with one more stride-2 stage for 64x64 inputs (CUB, MIMIC-CXR, video frames):
    Conv(C->32->64->128->128, k3 s2 p1) to 128x4x4, then Conv(128->D, k4) heads."""

    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(),  # 32x32
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),  # 16x16
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),  # 8x8
            nn.Conv2d(128, 128, 3, 2, 1), nn.ReLU(),  # 4x4
        )
        self.mu = nn.Conv2d(128, latent_dim, 4, 1, 0)
        self.logvar = nn.Conv2d(128, latent_dim, 4, 1, 0)

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)  # (B, 128, 4, 4): what the heads read

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return conv_heads(h, self.mu, self.logvar)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.features(x))


def _upsample64(channels: int) -> nn.Sequential:
    """128x4x4 -> Cx64x64: four ConvT(k4 s2 p1) doublings, no output activation (the Laplace mean)."""
    return nn.Sequential(
        nn.ConvTranspose2d(128, 128, 4, 2, 1), nn.ReLU(),  # 8x8
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),  # 16x16
        nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 32x32
        nn.ConvTranspose2d(32, channels, 4, 2, 1),  # 64x64
    )


class Image64Decoder(nn.Module):
    """Linear(D->2048) -> 128x4x4 -> ConvT(128->128->64->32->C) up to 64x64."""

    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(latent_dim, 2048), nn.ReLU())
        self.deconv = _upsample64(channels)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        x = self.deconv(self.fc(z.reshape(-1, z.shape[-1])).view(-1, 128, 4, 4))
        return x.view(*lead, *x.shape[1:])


def _image(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    size = tuple(spec.shape[1:])
    if size == (28, 28):  # the PolyMNIST networks, unchanged
        return ImageEncoder(latent_dim, spec.shape[0]), ImageDecoder(latent_dim, spec.shape[0])
    if size == (64, 64):
        return Image64Encoder(latent_dim, spec.shape[0]), Image64Decoder(latent_dim, spec.shape[0])
    raise ProtocolError(f"image backbone expects (C, 28, 28) or (C, 64, 64), got {spec.shape} for modality {spec.name}")


# ---------------------------------------------------------------- video clips (C, F, 64, 64)
class VideoEncoder(nn.Module):
    """Per-frame 64x64 conv trunk (shared over frames) -> Linear(2048->H) per frame -> temporal
    Conv1d(H->H, k3) over the F frames -> Linear(F*H -> D) heads for mean and log-variance."""

    def __init__(self, latent_dim: int, channels: int, frames: int, hidden: int = 256):
        super().__init__()
        self.frame = nn.Sequential(Image64Encoder(latent_dim, channels).trunk, nn.Flatten(), nn.Linear(2048, hidden), nn.ReLU())
        self.temporal = nn.Sequential(nn.Conv1d(hidden, hidden, 3, 1, 1), nn.ReLU(), nn.Flatten())
        self.mu = nn.Linear(hidden * frames, latent_dim)
        self.logvar = nn.Linear(hidden * frames, latent_dim)

    def features(self, x: Tensor) -> Tensor:  # x: (B, C, F, 64, 64)
        B, C, F = x.shape[:3]
        h = self.frame(x.transpose(1, 2).reshape(B * F, C, *x.shape[3:]))  # (B*F, H)
        return self.temporal(h.view(B, F, -1).transpose(1, 2))  # (B, H*F)

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.logvar(h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.features(x))


class VideoDecoder(nn.Module):
    """Linear(D -> F*H) -> temporal Conv1d(H->H, k3) -> per frame Linear(H->2048) -> 128x4x4 -> ConvT to 64x64."""

    def __init__(self, latent_dim: int, channels: int, frames: int, hidden: int = 256):
        super().__init__()
        self.frames, self.hidden = frames, hidden
        self.fc = nn.Sequential(nn.Linear(latent_dim, hidden * frames), nn.ReLU())
        self.temporal = nn.Sequential(nn.Conv1d(hidden, hidden, 3, 1, 1), nn.ReLU())
        self.frame_fc = nn.Sequential(nn.Linear(hidden, 2048), nn.ReLU())
        self.deconv = _upsample64(channels)

    def forward(self, z: Tensor) -> Tensor:
        lead, F = z.shape[:-1], self.frames
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, self.hidden, F)  # (N, H, F)
        h = self.temporal(h).transpose(1, 2).reshape(-1, self.hidden)  # (N*F, H)
        x = self.deconv(self.frame_fc(h).view(-1, 128, 4, 4))  # (N*F, C, 64, 64)
        x = x.view(-1, F, *x.shape[1:]).transpose(1, 2)  # (N, C, F, 64, 64)
        return x.reshape(*lead, *x.shape[1:])


def _video(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if len(spec.shape) != 4 or tuple(spec.shape[2:]) != (64, 64):
        raise ProtocolError(f"video backbone expects (C, F, 64, 64), got {spec.shape} for modality {spec.name}")
    C, F = spec.shape[:2]
    return VideoEncoder(latent_dim, C, F), VideoDecoder(latent_dim, C, F)


# ---------------------------------------------------------------- text (L,) token ids
def _text_stages(length: int) -> int:
    """Stride-2 stages that bring a sequence of `length` tokens down to at most 4 positions."""
    return max(1, math.ceil(math.log2(max(length, 2) / 4)))


class TextEncoder(nn.Module):
    """Embedding(V->E) -> n x [Conv1d(k4 s2 p1)-ReLU] to <= 4 positions -> flatten -> Linear heads."""

    def __init__(self, latent_dim: int, length: int, vocab: int, embed: int = 128, hidden: int = 256):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        layers, c, n = [], embed, length
        for _ in range(_text_stages(length)):
            layers += [nn.Conv1d(c, hidden, 4, 2, 1), nn.ReLU()]
            c, n = hidden, (n + 2 - 4) // 2 + 1
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.mu = nn.Linear(hidden * n, latent_dim)
        self.logvar = nn.Linear(hidden * n, latent_dim)

    def features(self, x: Tensor) -> Tensor:  # x: (B, L) token ids (any dtype)
        return self.conv(self.embed(x.long()).transpose(1, 2))  # (B, H * L')

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.logvar(h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.features(x))


class TextDecoder(nn.Module):
    """Linear(D -> H x L0) -> n x [ConvT1d(k4 s2 p1)-ReLU] -> crop to L -> Conv1d(H->V, k1): (L, V) logits
    of a categorical likelihood per token."""

    def __init__(self, latent_dim: int, length: int, vocab: int, hidden: int = 256):
        super().__init__()
        n = _text_stages(length)
        self.length, self.hidden, self.l0 = length, hidden, math.ceil(length / 2**n)
        self.fc = nn.Sequential(nn.Linear(latent_dim, hidden * self.l0), nn.ReLU())
        self.deconv = nn.Sequential(*[m for _ in range(n) for m in (nn.ConvTranspose1d(hidden, hidden, 4, 2, 1), nn.ReLU())])
        self.out = nn.Conv1d(hidden, vocab, 1)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.deconv(self.fc(z.reshape(-1, z.shape[-1])).view(-1, self.hidden, self.l0))[..., :self.length]
        logits = self.out(h).transpose(1, 2)  # (N, L, V)
        return logits.reshape(*lead, *logits.shape[1:])


def _text(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if len(spec.shape) != 1 or spec.vocab_size < 2:
        raise ProtocolError(f"text backbone expects shape (L,) and vocab_size >= 2, got {spec.shape}, "
                            f"{spec.vocab_size} for modality {spec.name}")
    L, V = spec.shape[0], spec.vocab_size
    return TextEncoder(latent_dim, L, V), TextDecoder(latent_dim, L, V)


# ---------------------------------------------------------------- skeleton sequences (T, J, 3)
class SkeletonEncoder(nn.Module):
    """Temporal convolution over joints: the J*3 joint coordinates are the channels of a 1-D conv over
    time. Conv1d(3J->128, k5) -> Conv1d(128->128, k4 s2 p1) -> Conv1d(128->256, k4 s2 p1) to T/4 steps,
    flatten, then Linear(256*T/4 -> D) heads for mean and log-variance."""

    def __init__(self, latent_dim: int, frames: int, joints: int, coords: int = 3):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv1d(joints * coords, 128, 5, 1, 2), nn.ReLU(),
            nn.Conv1d(128, 128, 4, 2, 1), nn.ReLU(),  # T/2
            nn.Conv1d(128, 256, 4, 2, 1), nn.ReLU(),  # T/4
            nn.Flatten(),
        )
        self.mu = nn.Linear(256 * (frames // 4), latent_dim)
        self.logvar = nn.Linear(256 * (frames // 4), latent_dim)

    def features(self, x: Tensor) -> Tensor:  # x: (B, T, J, 3)
        return self.trunk(x.flatten(2).transpose(1, 2))  # (B, 3J, T) -> (B, 256*T/4)

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(h), self.logvar(h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.features(x))


class SkeletonDecoder(nn.Module):
    """Linear(D -> 256*T/4) -> ConvT1d(256->128->128, k4 s2 p1) up to T steps -> Conv1d(128->3J, k5):
    the (T, J, 3) mean, no output activation (Laplace/Gaussian location)."""

    def __init__(self, latent_dim: int, frames: int, joints: int, coords: int = 3):
        super().__init__()
        self.shape, self.t0 = (frames, joints, coords), frames // 4
        self.fc = nn.Sequential(nn.Linear(latent_dim, 256 * self.t0), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose1d(256, 128, 4, 2, 1), nn.ReLU(),  # T/2
            nn.ConvTranspose1d(128, 128, 4, 2, 1), nn.ReLU(),  # T
            nn.Conv1d(128, joints * coords, 5, 1, 2),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.deconv(self.fc(z.reshape(-1, z.shape[-1])).view(-1, 256, self.t0))  # (N, 3J, T)
        return h.transpose(1, 2).reshape(*lead, *self.shape)


def _skeleton(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if len(spec.shape) != 3 or spec.shape[0] < 4 or spec.shape[0] % 4:
        raise ProtocolError(f"skeleton backbone expects (T, J, C) with T a multiple of 4, got {spec.shape} "
                            f"for modality {spec.name}")
    T, J, C = spec.shape
    return SkeletonEncoder(latent_dim, T, J, C), SkeletonDecoder(latent_dim, T, J, C)


# kind -> factory(spec, latent_dim) -> (encoder, decoder). New modality kinds register here.
BACKBONES: dict[str, Callable[[ModalitySpec, int], tuple[nn.Module, nn.Module]]] = {
    "image": _image, "video": _video, "text": _text, "skeleton": _skeleton,
}


def make_backbones(spec: ModalitySpec, latent_dim: int) -> tuple[nn.Module, nn.Module]:
    if spec.kind not in BACKBONES:
        raise ProtocolError(f"no backbone for modality kind {spec.kind!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[spec.kind](spec, latent_dim)


def make_encoders(modalities, latent_dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({m.name: make_backbones(m, latent_dim)[0] for m in modalities})


def make_decoders(modalities, latent_dim: int) -> nn.ModuleDict:
    return nn.ModuleDict({m.name: make_backbones(m, latent_dim)[1] for m in modalities})
