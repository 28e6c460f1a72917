"""The Fréchet code as it was before the two paths were merged (issue 15), kept only so a test can
check that the one shared path gives the same numbers: `compute_fid` and `in_domain_frechet`
below are copied from shala_bench/metrics/fid.py and frechet.py at commit 7892683, unchanged but
for imports and the cache folder of the real statistics (``fid_stats_v1``, so they are computed
afresh, not read from the new path's cache). The formula, `gaussian_statistics` and `frechet_distance`, is torch-fidelity's and
was already shared."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from shala_bench.data.cache import cache_key, default_cache_dir
from shala_bench.metrics.coherence import subsets_by_size
from shala_bench.metrics.fid import PAPER_FID_N, Extractor, to_uint8
from shala_bench.metrics.frechet import EXTRACTOR, frechet_distance, gaussian_statistics


def cond_subsets(modalities: list[str], protocol, seed: int) -> dict[int, list[tuple[str, ...]]]:
    """Source subsets per size k for conditional FID and FD: coherence's, or a seeded `frechet_cond_subsets` per k."""
    by_k = subsets_by_size(modalities, protocol.max_subsets_per_k, protocol.data_seed)
    n = protocol.frechet_cond_subsets
    if n > 0:
        rng = random.Random(seed)
        by_k = {k: sorted(rng.sample(S, n)) if len(S) > n else S for k, S in by_k.items()}
    return by_k


def real_statistics(ctx, extractor: Extractor, modality: str, n: int, split: str = "test") -> dict:
    """Statistics of the first n real images of a split, cached per (dataset, split, modality, extractor)."""
    data = ctx.data
    key = dict(dataset=ctx.protocol.dataset, data=Path(data.cache_path).name if data.cache_path else "",
               source=data.source, n_modalities=len(data.spec.modalities), data_seed=ctx.protocol.data_seed,
               split=split, modality=modality, n=n, extractor=extractor.identity)
    root = Path(ctx.cache_dir or default_cache_dir()) / "fid_stats_v1"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{ctx.protocol.dataset}-{split}-{modality}-{extractor.name}-{cache_key(key)}.npz"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            with np.load(path) as f:
                return {"mu": f["mu"], "sigma": f["sigma"]}
        stats = gaussian_statistics(extractor(data.splits[split].data[modality][:n]))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **stats)
        os.replace(tmp, path)
    return stats


def compute_fid(ctx, extractor: Extractor) -> dict:
    """FID of unconditional and conditional generation of every image modality (see the module doc)."""
    model, p = ctx.model, ctx.protocol
    images = [m for m in model.modalities if ctx.data.spec.modality(m).kind == "image"]
    if not images:
        return {"fid_unavailable": f"no image modality in {ctx.data.spec.name}"}
    test = ctx.test(p.fid_n)
    n = len(test)
    res: dict = {"fid_n": n, "fid_extractor": f"{extractor.name}/{extractor.layer}",
                 "fid_extractor_hash": extractor.identity}
    if n < PAPER_FID_N:
        res["fid_note"] = f"n={n} < {PAPER_FID_N}: biased upward; compare only with equal fid_n"
    real = {m: real_statistics(ctx, extractor, m, n) for m in images}

    gen: dict[str, list[Tensor]] = {m: [] for m in images}
    for i in range(0, n, 250):
        out = model.sample(min(250, n - i))
        for m in images:
            gen[m].append(extractor(to_uint8(out[m])))
    for m in images:
        res[f"fid_joint_{m}"] = frechet_distance(gaussian_statistics(torch.cat(gen[m])), real[m])
    res["fid_mean"] = float(np.mean([res[f"fid_joint_{m}"] for m in images]))

    if len(model.modalities) > 1:
        x = {m: torch.cat([b[m] for b, _ in ctx.batches(test)]) for m in model.modalities}
        per_k = {}
        for k, subsets in cond_subsets(model.modalities, p, ctx.seed).items():
            values = []
            for S in subsets:
                targets = [m for m in images if m not in S]
                if not targets:
                    continue
                feats: dict[str, list[Tensor]] = {t: [] for t in targets}
                for i in range(0, n, 250):
                    out = model.generate({m: x[m][i:i + 250] for m in S}, targets)
                    for t in targets:
                        feats[t].append(extractor(to_uint8(out[t])))
                values += [frechet_distance(gaussian_statistics(torch.cat(feats[t])), real[t]) for t in targets]
            if values:
                per_k[k] = float(np.mean(values))
        res.update({f"fid_cond_k{k}": v for k, v in per_k.items()})
        if per_k:
            res["fid_cond_mean"] = float(np.mean(list(per_k.values())))
    return res


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
        return {}
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


