"""What a dataset plugin hands the harness: a spec and in-memory tensor splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: str  # "image" | "skeleton" | "video" | "text": picks the harness backbone
    shape: tuple[int, ...]  # shape of one sample, e.g. (3, 28, 28)
    likelihood: str = "laplace"  # "laplace" | "bernoulli" | "categorical" | "gaussian"
    vocab_size: int = 0  # text only: token ids are in [0, vocab_size); 0 for every other kind


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    modalities: tuple[ModalitySpec, ...]
    n_classes: int
    class_names: tuple[str, ...] = ()
    multilabel: bool = False

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass
class Split:
    """One split held in memory: raw uint8 tensors per modality and integer labels."""

    data: dict[str, Tensor]  # modality -> (N, *shape) uint8
    labels: Tensor  # (N,) int64, or (N, C) for multi-label data

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> "Split":
        return Split({k: v.to(device) for k, v in self.data.items()}, self.labels.to(device))

    def take(self, index: Tensor) -> "Split":
        return Split({k: v[index] for k, v in self.data.items()}, self.labels[index])

    def head(self, n: int) -> "Split":
        return Split({k: v[:n] for k, v in self.data.items()}, self.labels[:n])


def to_float(x: Tensor) -> Tensor:
    """uint8 pixels -> floats in [0, 1], the range every image likelihood is defined on."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    splits: dict[str, Split]
    source: dict = field(default_factory=dict)  # what it was built from (for records and `data info`)
    cache_path: str = ""
