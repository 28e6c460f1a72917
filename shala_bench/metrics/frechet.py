"""In-domain Fréchet distance, in the feature space of the harness's own per-modality classifier.

The Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017),

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

is computed with torch-fidelity's FID statistics (`fid_features_to_statistics`,
`fid_statistics_to_metric`), so FID and FD share one formula. The features are the
penultimate layer of the harness classifier of each modality (`classifiers.embed`):
trained on the dataset itself, it runs offline, for every modality kind that has a
classifier, and cheaply. Being in-domain it ranks models on this dataset, but its values
are not comparable with Inception FIDs or across datasets.

Protocol: `fd_n` samples. Unconditional: `fd_n` prior samples of each modality against
the first `fd_n` test tuples (`fd_joint_<m>`, mean `fd_mean`). Conditional: for the same
source subsets S as coherence (or a seeded `frechet_cond_subsets` per k), every missing
modality generated from the first `fd_n` test tuples' x_S against that modality's test features, averaged per k over subsets and
targets (`fd_cond_k<k>`, mean `fd_cond_mean`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from shala_bench.hookspecs import hookimpl
from shala_bench.registry import MetricEntry

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


# ---------------------------------------------------------------- the metric
def _features(ctx, m: str, x: Tensor) -> Tensor:
    """Penultimate features of modality m's classifier for real or generated x_m. (B, F)"""
    from shala_bench.metrics.classifiers import classifier_input, embed

    return embed(ctx.classifiers[m][0], classifier_input(ctx.data.spec.modality(m), x))


def _real(ctx, n: int) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """The first n test tuples (floats) and the statistics of their features per modality."""
    test = ctx.test(n)
    x = {m: torch.cat([b[m] for b, _ in ctx.batches(test)]) for m in ctx.model.modalities}
    stats = {m: gaussian_statistics(_features(ctx, m, x[m])) for m in ctx.model.modalities}
    return x, stats


def in_domain_frechet(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    if p.fd_n <= 0:
        return {"fd_unavailable": "fd_n = 0 in this protocol: no Fréchet-distance samples"}
    missing = [m for m in model.modalities if getattr(ctx.classifiers[m][0], "features", None) is None]
    if missing:
        return {"fd_unavailable": f"no penultimate-layer features for modality {', '.join(missing)}"}
    x_real, real = _real(ctx, p.fd_n)
    n = len(next(iter(x_real.values())))
    res: dict = {"fd_n": n, "fd_extractor": EXTRACTOR}

    # unconditional: prior samples of every modality
    gen: dict[str, list[Tensor]] = {m: [] for m in model.modalities}
    for i in range(0, n, 500):
        out = model.sample(min(500, n - i))
        for m in model.modalities:
            gen[m].append(_features(ctx, m, out[m]))
    for m in model.modalities:
        res[f"fd_joint_{m}"] = frechet_distance(gaussian_statistics(torch.cat(gen[m])), real[m])
    res["fd_mean"] = float(np.mean([res[f"fd_joint_{m}"] for m in model.modalities]))

    # conditional: the missing modalities from each source subset of the test tuples
    if len(model.modalities) > 1:
        per_k = {}
        from shala_bench.metrics.fid import cond_subsets

        for k, subsets in cond_subsets(model.modalities, p, ctx.seed).items():
            values = []
            for S in subsets:
                targets = [m for m in model.modalities if m not in S]
                feats: dict[str, list[Tensor]] = {t: [] for t in targets}
                for i in range(0, n, 500):
                    out = model.generate({m: x_real[m][i:i + 500] for m in S}, targets)
                    for t in targets:
                        feats[t].append(_features(ctx, t, out[t]))
                values += [frechet_distance(gaussian_statistics(torch.cat(feats[t])), real[t]) for t in targets]
            per_k[k] = float(np.mean(values))
        res.update({f"fd_cond_k{k}": v for k, v in per_k.items()})
        res["fd_cond_mean"] = float(np.mean(list(per_k.values())))
    return res


@hookimpl
def shala_bench_register_metrics():
    return [MetricEntry("frechet", in_domain_frechet,
                        "in-domain Fréchet distance in the harness classifier's penultimate-layer features, "
                        "unconditional per modality and conditional per k", 60)]
