"""The one Fréchet path: Inception FID (`metrics/fid.py`) and the in-domain FD (here) both run it.

The Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017),

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

is computed with torch-fidelity's FID statistics (`fid_features_to_statistics`,
`fid_statistics_to_metric`). `frechet_scores(ctx, space, prefix, modalities, n)` is the one
loop over what is generated: `n` unconditional samples of each modality (`<prefix>_joint_<m>`,
mean `<prefix>_mean`) and, for every source subset S per size k (coherence's, or a seeded
`frechet_cond_subsets` per k), every missing modality generated from the first `n` test tuples'
x_S, averaged per k over subsets and targets (`<prefix>_cond_k<k>`, mean `<prefix>_cond_mean`).
Each is measured against the statistics of the first `n` real test tuples of that modality,
cached per (dataset, split, modality, feature-space identity) under the cache folder, behind a
file lock, and reused by every model. A `FeatureSpace` says where the features come from.

In-domain FD (this module's metric): the features are the penultimate layer of the harness
classifier of each modality (`classifiers.embed`): trained on the dataset itself, it runs
offline, for every modality kind that has a classifier, and cheaply. Being in-domain it ranks
models on this dataset, but its values are not comparable with Inception FIDs or across
datasets. `fd_n` samples (0 = off).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from shala_bench.data.cache import cache_key, default_cache_dir
from shala_bench.hookspecs import hookimpl
from shala_bench.metrics.coherence import subsets_by_size
from shala_bench.registry import MetricEntry, MetricKey

EXTRACTOR = "harness-classifier-penultimate"


# ---------------------------------------------------------------- the formula
def gaussian_statistics(features: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """{"mu": (F,), "sigma": (F, F)} of a (N, F) feature set, in float64 (torch-fidelity's estimator)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(torch.as_tensor(features).detach().cpu().double())


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """Fréchet distance between two Gaussians given as torch-fidelity statistics dicts."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    s1 = {k: np.asarray(v, dtype=np.float64) for k, v in stats_1.items()}
    s2 = {k: np.asarray(v, dtype=np.float64) for k, v in stats_2.items()}
    # a tiny negative value is round-off of a distance that is 0
    return max(float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]), 0.0)


# ---------------------------------------------------------------- the path
@dataclass
class FeatureSpace:
    """Where a Fréchet distance is measured."""

    name: str  # the extractor's name, e.g. "inception-v3-compat" (names the cache files)
    identity: Callable[[str], str]  # modality -> hash of what determines its features (keys the real cache)
    real: Callable[[str, Tensor], Tensor]  # (modality, stored test tensor (N, ...)) -> (N, F) features
    fake: Callable[[str, Tensor], Tensor]  # (modality, generated float tensor (N, ...)) -> (N, F) features
    chunk: int = 500  # samples asked of the model per call


def cond_subsets(modalities: list[str], protocol, seed: int) -> dict[int, list[tuple[str, ...]]]:
    """Source subsets per size k for conditional FID and FD: coherence's, or a seeded `frechet_cond_subsets` per k."""
    by_k = subsets_by_size(modalities, protocol.max_subsets_per_k, protocol.data_seed)
    n = protocol.frechet_cond_subsets
    if n > 0:
        rng = random.Random(seed)
        by_k = {k: sorted(rng.sample(S, n)) if len(S) > n else S for k, S in by_k.items()}
    return by_k


def real_statistics(ctx, space: FeatureSpace, modality: str, n: int, split: str = "test") -> dict:
    """Statistics of the first n real tuples of a split, cached per (dataset, split, modality, feature space)."""
    data = ctx.data
    key = dict(dataset=ctx.protocol.dataset, data=Path(data.cache_path).name if data.cache_path else "",
               source=data.source, n_modalities=len(data.spec.modalities), data_seed=ctx.protocol.data_seed,
               split=split, modality=modality, n=n, extractor=space.identity(modality))
    root = Path(ctx.cache_dir or default_cache_dir()) / "fid_stats"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{ctx.protocol.dataset}-{split}-{modality}-{space.name}-{cache_key(key)}.npz"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            with np.load(path) as f:
                return {"mu": f["mu"], "sigma": f["sigma"]}
        stats = gaussian_statistics(space.real(modality, data.splits[split].data[modality][:n]))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **stats)
        os.replace(tmp, path)
    return stats


def frechet_scores(ctx, space: FeatureSpace, prefix: str, modalities: list[str], n: int) -> dict:
    """Unconditional and conditional Fréchet distances of `modalities` (see the module doc)."""
    model, p = ctx.model, ctx.protocol
    real = {m: real_statistics(ctx, space, m, n) for m in modalities}
    step = space.chunk

    def distance(feats: list[Tensor], m: str) -> float:
        return frechet_distance(gaussian_statistics(torch.cat(feats)), real[m])

    gen: dict[str, list[Tensor]] = {m: [] for m in modalities}
    for i in range(0, n, step):
        out = model.sample(min(step, n - i))
        for m in modalities:
            gen[m].append(space.fake(m, out[m]))
    res = {f"{prefix}_joint_{m}": distance(gen[m], m) for m in modalities}
    res[f"{prefix}_mean"] = float(np.mean([res[f"{prefix}_joint_{m}"] for m in modalities]))

    if len(model.modalities) > 1:
        test = ctx.test(n)
        x = {m: torch.cat([b[m] for b, _ in ctx.batches(test)]) for m in model.modalities}
        per_k = {}
        for k, subsets in cond_subsets(model.modalities, p, ctx.seed).items():
            values = []
            for S in subsets:
                targets = [m for m in modalities if m not in S]
                if not targets:
                    continue
                feats: dict[str, list[Tensor]] = {t: [] for t in targets}
                for i in range(0, n, step):
                    out = model.generate({m: x[m][i:i + step] for m in S}, targets)
                    for t in targets:
                        feats[t].append(space.fake(t, out[t]))
                values += [distance(feats[t], t) for t in targets]
            if values:
                per_k[k] = float(np.mean(values))
        res.update({f"{prefix}_cond_k{k}": v for k, v in per_k.items()})
        if per_k:
            res[f"{prefix}_cond_mean"] = float(np.mean(list(per_k.values())))
    return res


def frechet_keys(prefix: str, what: str, quick_biased: bool = False) -> tuple[MetricKey, ...]:
    """The keys `frechet_scores` writes under `prefix`, for a MetricEntry."""
    q = dict(quick_biased=quick_biased)
    return (
        MetricKey(f"{prefix}_joint_*", "lower", f"{what} of a modality's unconditional samples to its test set", **q),
        MetricKey(f"{prefix}_mean", "lower", f"unconditional {what}, mean over modalities", **q),
        MetricKey(f"{prefix}_cond_mean", "lower", f"conditional {what}, mean over k", **q),
        MetricKey(f"{prefix}_cond_k*", "lower", f"{what} of modalities generated from k given ones, mean over "
                  "subsets and targets", **q),
        MetricKey(f"{prefix}_n", None, "samples per set"),
        MetricKey(f"{prefix}_extractor*", None, "the feature space (and its hash)"),
        MetricKey(f"{prefix}_note", None, "a caveat on the values"),
        MetricKey(f"{prefix}_unavailable", None, "why it was not computed"),
    )


# ---------------------------------------------------------------- the in-domain FD
def classifier_space(ctx) -> FeatureSpace:
    """The harness classifiers' penultimate layers, identified by a hash of each classifier's weights."""
    from shala_bench.data.spec import to_float
    from shala_bench.metrics.classifiers import classifier_input, embed

    def fake(m: str, x: Tensor) -> Tensor:
        return embed(ctx.classifiers[m][0], classifier_input(ctx.data.spec.modality(m), x))

    def identity(m: str) -> str:
        h = hashlib.sha256()
        for k, v in sorted(ctx.classifiers[m][0].state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return cache_key(dict(name=EXTRACTOR, weights=h.hexdigest()))

    return FeatureSpace(EXTRACTOR, identity, lambda m, raw: fake(m, to_float(raw.to(ctx.device))), fake, chunk=500)


def in_domain_frechet(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    if p.fd_n <= 0:
        return {"fd_unavailable": "fd_n = 0 in this protocol: no Fréchet-distance samples"}
    missing = [m for m in model.modalities if getattr(ctx.classifiers[m][0], "features", None) is None]
    if missing:
        return {"fd_unavailable": f"no penultimate-layer features for modality {', '.join(missing)}"}
    n = len(ctx.data.splits["test"].head(p.fd_n))
    res: dict = {"fd_n": n, "fd_extractor": EXTRACTOR}
    res.update(frechet_scores(ctx, classifier_space(ctx), "fd", list(model.modalities), n))
    return res


@hookimpl
def shala_bench_register_metrics():
    return [MetricEntry("frechet", in_domain_frechet,
                        "in-domain Fréchet distance in the harness classifier's penultimate-layer features, "
                        "unconditional per modality and conditional per k", 60,
                        keys=frechet_keys("fd", "in-domain Fréchet distance"))]
