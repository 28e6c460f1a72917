"""Cross-modal and joint coherence, judged by the harness's per-modality classifiers.

Protocol (MoPoE / MMVAE+): for every subset S of size k = 1..M-1 (all subsets when
M <= 5, a fixed seeded sample of `max_subsets_per_k` subsets per k beyond), generate
the missing modalities from the test tuples' x_S and score the classifier's prediction
of each generated modality against the true label; coherence at k is the mean over
subsets and generated modalities. Joint coherence: the fraction of unconditional samples
whose predicted labels agree across all modalities. Chance is 1/C for conditional and
1/C^(M-1) for joint coherence (C classes).

Multi-label data (MIMIC-CXR's CheXpert findings): a generated modality is scored by the
AUROC of its classifier's sigmoid output against each true finding, averaged over the
findings present and absent in the evaluated test tuples (others are skipped), then over
subsets and generated modalities as above; chance is 0.5. Joint coherence: per finding,
the fraction of prior samples on which every modality's classifier takes the same
decision (sigmoid > 0.5), averaged over findings.
"""

from __future__ import annotations

import itertools
import random

import torch

from shala_bench.hookspecs import hookimpl
from shala_bench.metrics.classifiers import classifier_input, predict
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
    if len(model.modalities) < 2:
        return {}
    multilabel = ctx.data.spec.multilabel
    clfs = ctx.classifiers
    test = ctx.test(p.eval_n)
    per_k = {}
    for k, subsets in subsets_by_size(model.modalities, p.max_subsets_per_k, p.data_seed).items():
        scores = []
        for S in subsets:
            targets = [m for m in model.modalities if m not in S]
            correct = torch.zeros(len(targets), device=ctx.device)
            logits: list[list[torch.Tensor]] = [[] for _ in targets]  # multi-label: scores for the AUROC
            for x, y in ctx.batches(test):
                out = model.generate({m: x[m] for m in S}, targets)
                for j, t in enumerate(targets):
                    scored = predict(clfs[t][0], classifier_input(ctx.data.spec.modality(t), out[t]))
                    if multilabel:
                        logits[j].append(scored)
                    else:
                        correct[j] += (scored.argmax(1) == y).sum()
            if multilabel:
                scores.append(torch.tensor([mean_auroc(torch.cat(lj), test.labels) for lj in logits]))
            else:
                scores.append(correct.cpu() / len(test))
        per_k[k] = float(torch.cat(scores).mean())
    res = {f"coherence_cond_k{k}": v for k, v in per_k.items()}
    res["coherence_cond_mean"] = sum(per_k.values()) / len(per_k)
    if not multilabel:  # kept with the numbers, so a leaderboard can tell a result from chance
        res["coherence_cond_chance"] = 1.0 / ctx.data.spec.n_classes
    return res


def mean_auroc(logits, labels) -> float:
    """Mean over findings of the AUROC of scores (N, C) against 0/1 labels (N, C); findings whose
    labels are all 0 or all 1 in this set have no AUROC and are skipped (nan if none is left)."""
    from sklearn.metrics import roc_auc_score

    scores, truth = logits.float().sigmoid().cpu().numpy(), labels.cpu().numpy()
    aucs = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)]
    return float(sum(aucs) / len(aucs)) if aucs else float("nan")


def joint_coherence(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    spec = ctx.data.spec
    clfs = ctx.classifiers
    agree = 0.0
    for i in range(0, p.joint_n, 500):
        n = min(500, p.joint_n - i)
        out = model.sample(n)
        scored = torch.stack([predict(clfs[m][0], classifier_input(spec.modality(m), out[m])) for m in model.modalities])
        if spec.multilabel:  # (M, n, C) decisions; per finding, do all modalities agree? averaged over findings
            preds = scored > 0
            agree += float((preds == preds[0]).all(0).float().mean(1).sum())
        else:
            preds = scored.argmax(-1)
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
