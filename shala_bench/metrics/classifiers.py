"""Per-modality label classifiers trained by the harness on real training data.

They judge coherence (is a generated image the right digit?) and their penultimate
layer is the feature space of the in-domain Fréchet distance. Each is cached by a hash
of what determines it (dataset, modality, data settings, training settings, code
version), so every model is judged by the very same classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor, nn

from shala_bench.data.cache import cache_key, default_cache_dir
from shala_bench.data.spec import LoadedDataset, ModalitySpec, to_float
from shala_bench.errors import ProtocolError
from shala_bench.protocol import Protocol

CLASSIFIER_VERSION = 1


class ImageClassifier(nn.Module):
    """A small CNN: three strided convs, a 128-d penultimate layer (the FD feature space)."""

    feature_dim = 128

    def __init__(self, n_classes: int, channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


CLASSIFIERS = {"image": ImageClassifier}


def make_classifier(spec: ModalitySpec, n_classes: int) -> nn.Module:
    if spec.kind not in CLASSIFIERS:
        raise ProtocolError(f"no classifier for modality kind {spec.kind!r}")
    return CLASSIFIERS[spec.kind](n_classes, spec.shape[0]) if spec.kind == "image" else CLASSIFIERS[spec.kind](spec, n_classes)


def classifier_key(protocol: Protocol, modality: str) -> dict:
    return dict(dataset=protocol.dataset, modality=modality, data_seed=protocol.data_seed, n_train=protocol.n_train,
                n_test=protocol.n_test, n_modalities=protocol.n_modalities, epochs=protocol.classifier_epochs,
                batch=protocol.classifier_batch, version=CLASSIFIER_VERSION)


@torch.no_grad()
def predict(clf: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """Class logits for float inputs, in batches."""
    return torch.cat([clf(x[i:i + batch]) for i in range(0, len(x), batch)])


def _train_one(spec: ModalitySpec, data: LoadedDataset, protocol: Protocol, device) -> tuple[nn.Module, float]:
    torch.manual_seed(1234)  # the classifier is part of the protocol: same weights for every caller
    clf = make_classifier(spec, data.spec.n_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    x, y = data.splits["train"].data[spec.name].to(device), data.splits["train"].labels.to(device)
    g = torch.Generator().manual_seed(0)
    loss_fn = nn.BCEWithLogitsLoss() if data.spec.multilabel else nn.CrossEntropyLoss()
    clf.train()
    for _ in range(protocol.classifier_epochs):
        perm = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), protocol.classifier_batch):
            idx = perm[i:i + protocol.classifier_batch]
            target = y[idx].float() if data.spec.multilabel else y[idx]
            loss = loss_fn(clf(to_float(x[idx])), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clf.eval()
    xt, yt = data.splits["test"].data[spec.name].to(device), data.splits["test"].labels.to(device)
    logits = predict(clf, to_float(xt))
    acc = float(((logits > 0).long() == yt).float().mean() if data.spec.multilabel else (logits.argmax(1) == yt).float().mean())
    return clf, acc


def get_classifiers(data: LoadedDataset, protocol: Protocol, device="cpu", cache_dir: Path | None = None):
    """{modality: (classifier, test accuracy)}, trained once and cached."""
    root = Path(cache_dir or default_cache_dir()) / "classifiers"
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in data.spec.modalities:
        key = classifier_key(protocol, spec.name)
        path = root / f"{protocol.dataset}-{spec.name}-{cache_key(key)}.pt"
        with FileLock(str(path) + ".lock"):
            if path.exists():
                blob = torch.load(path, map_location="cpu", weights_only=True)
                clf = make_classifier(spec, data.spec.n_classes)
                clf.load_state_dict(blob["state"])
                acc = float(blob["accuracy"])
            else:
                # fork: leave the caller's RNG stream untouched; enable_grad: metrics run under no_grad
                with torch.random.fork_rng(devices=[]), torch.enable_grad():
                    clf, acc = _train_one(spec, data, protocol, device)
                from shala_bench.trainer import atomic_torch_save

                atomic_torch_save({"state": {k: v.cpu() for k, v in clf.state_dict().items()}, "accuracy": acc,
                                   "key": json.dumps(key, sort_keys=True)}, path)
        out[spec.name] = (clf.to(device).eval(), acc)
    return out
