"""Cross-modal and joint coherence, judged by the harness's per-modality classifiers.

Protocol (MoPoE / MMVAE+): for every subset S of size k = 1..M-1 (all subsets when
M <= 5, a fixed seeded sample of `max_subsets_per_k` subsets per k beyond), generate
the missing modalities from the test tuples' x_S and score the classifier's prediction
of each generated modality against the true label; coherence at k is the mean over
subsets and generated modalities. Joint coherence: the fraction of unconditional samples
whose predicted labels agree across all modalities. Chance is 1/C for conditional and
1/C^(M-1) for joint coherence (C classes).
"""

from __future__ import annotations

import itertools
import random

import torch

from shala_bench.hookspecs import hookimpl
from shala_bench.metrics.classifiers import predict
from shala_bench.registry import MetricEntry


def subsets_by_size(modalities: list[str], max_per_k: int, seed: int = 0) -> dict[int, list[tuple[str, ...]]]:
    M = len(modalities)
    rng = random.Random(seed)
    out = {}
    for k in range(1, M):
        combos = list(itertools.combinations(modalities, k))
        if M > 5 and len(combos) > max_per_k:
            combos = sorted(rng.sample(combos, max_per_k))
        out[k] = combos
    return out


def conditional_coherence(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    if ctx.data.spec.multilabel or len(model.modalities) < 2:
        return {}
    clfs = ctx.classifiers
    test = ctx.test(p.eval_n)
    per_k = {}
    for k, subsets in subsets_by_size(model.modalities, p.max_subsets_per_k, p.data_seed).items():
        scores = []
        for S in subsets:
            targets = [m for m in model.modalities if m not in S]
            correct = torch.zeros(len(targets), device=ctx.device)
            for x, y in ctx.batches(test):
                out = model.generate({m: x[m] for m in S}, targets)
                for j, t in enumerate(targets):
                    pred = predict(clfs[t][0], out[t].clamp(0, 1)).argmax(1)
                    correct[j] += (pred == y).sum()
            scores.append(correct / len(test))
        per_k[k] = float(torch.cat(scores).mean())
    res = {f"coherence_cond_k{k}": v for k, v in per_k.items()}
    res["coherence_cond_mean"] = sum(per_k.values()) / len(per_k)
    return res


def joint_coherence(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    if ctx.data.spec.multilabel:
        return {}
    clfs = ctx.classifiers
    agree = 0
    for i in range(0, p.joint_n, 500):
        n = min(500, p.joint_n - i)
        out = model.sample(n)
        preds = torch.stack([predict(clfs[m][0], out[m].clamp(0, 1)).argmax(1) for m in model.modalities])
        agree += int((preds == preds[0]).all(0).sum())
    return {"coherence_joint": agree / p.joint_n}


def classifier_accuracy(ctx) -> dict:
    accs = {f"classifier_acc_{m}": acc for m, (_, acc) in ctx.classifiers.items()}
    accs["classifier_acc_min"] = min(accs.values())
    return accs


@hookimpl
def shala_bench_register_metrics():
    return [
        MetricEntry("classifier_accuracy", classifier_accuracy,
                    "test accuracy of the harness's per-modality classifiers (must be high for coherence to mean anything)", 10),
        MetricEntry("coherence_conditional", conditional_coherence,
                    "cross-modal coherence per number k of given modalities (MoPoE/MMVAE+ protocol)", 20),
        MetricEntry("coherence_joint", joint_coherence,
                    "fraction of prior samples whose modalities' predicted labels all agree", 30),
    ]
