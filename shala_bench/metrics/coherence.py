"""Cross-modal and joint coherence, judged by the harness's per-modality classifiers.

Conditional (MoPoE / MMVAE+ protocol): for every subset S of size k = 1..M-1 (all subsets
when M <= 5, a fixed seeded sample of `max_subsets_per_k` subsets per k beyond), generate the
missing modalities from the test tuples' x_S and score the classifier's prediction of each
generated modality against the true label; coherence at k is the mean over subsets and
generated modalities. Two scores per generated modality:

- balanced accuracy, the mean over classes of the recall (torchmetrics
  ``MulticlassAccuracy(average="macro")``): a model that ignores its input and always
  answers one class scores exactly 1/C (C classes in the evaluated test tuples), whatever
  the class frequencies. This is the headline (`coherence_cond_bal_*`) and the score the
  leaderboard's chance test reads; `coherence_cond_chance` records its chance level.
- plain accuracy (`coherence_cond_k<k>`, `coherence_cond_mean`), the number published tables
  report; a constant answer scores the frequency of its class, which can exceed 1/C.

`_k1` and `_kmax` (k = M-1, every modality but one given) mean the same at every M; the mean
over k weights k = 1..M-1 equally, so it drifts with M when coherence rises with k.

Joint: M classifiers label each of `joint_n` unconditional samples. `coherence_joint` is the
raw agreement p_o, the fraction of samples whose modalities' labels all agree; a model whose
samples are all one class scores 1. `coherence_joint_kappa` corrects it for chance (Fleiss'
idea, for M raters that each have their own label frequencies):

    kappa = (p_o - p_e) / (1 - p_e),   p_e = sum_c prod_m p_m(c),

p_m(c) the fraction of samples modality m's classifier labels c: p_e is the agreement of M
independent modalities with these frequencies, so a collapsed model (p_e = p_o = 1) and one
whose modalities are independent both score 0 (kappa is 0 when p_e = 1). `coherence_joint_chance`
records p_e and `coherence_joint_majority` the largest share one class takes of one modality's
samples (max_m max_c p_m(c)); the leaderboard marks a seed collapsed when kappa is not above
chance or that share exceeds 1/2.

Multi-label data (MIMIC-CXR's CheXpert findings): a generated modality is scored by the AUROC
of its classifier's sigmoid output against each true finding, averaged over the findings
present and absent in the evaluated test tuples (others are skipped), then over subsets and
generated modalities as above; a constant score has AUROC 0.5 whatever the prevalence, so the
AUROC is also the balanced score. Joint: per finding, the decisions (sigmoid > 0.5) of every
modality; p_o, p_e and kappa per finding as above with the two classes positive/negative,
averaged over findings (no majority share: most findings are rare).
"""

from __future__ import annotations

import itertools
import random

import torch

from shala_bench.hookspecs import hookimpl
from shala_bench.metrics.classifiers import classifier_input, predict
from shala_bench.registry import MetricEntry, MetricKey


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


def balanced_accuracy(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Mean over classes of the recall (torchmetrics' macro-averaged multiclass accuracy). (N,), (N,)

    A class absent from `labels` counts only if it is predicted (as recall 0): evaluate on sets
    that hold every class."""
    from torchmetrics.classification import MulticlassAccuracy

    metric = MulticlassAccuracy(num_classes=n_classes, average="macro").to(preds.device)
    return float(metric(preds, labels))


def conditional_coherence(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    if len(model.modalities) < 2:
        return {}
    multilabel = ctx.data.spec.multilabel
    clfs = ctx.classifiers
    test = ctx.test(p.eval_n)
    plain, balanced = {}, {}
    for k, subsets in subsets_by_size(model.modalities, p.max_subsets_per_k, p.data_seed).items():
        acc, bal = [], []
        for S in subsets:
            targets = [m for m in model.modalities if m not in S]
            scored: list[list[torch.Tensor]] = [[] for _ in targets]  # per target: logits of every batch
            for x, _ in ctx.batches(test):
                out = model.generate({m: x[m] for m in S}, targets)
                for j, t in enumerate(targets):
                    scored[j].append(predict(clfs[t][0], classifier_input(ctx.data.spec.modality(t), out[t])))
            for sj in scored:
                logits = torch.cat(sj)
                if multilabel:
                    acc.append(mean_auroc(logits, test.labels))
                    bal.append(acc[-1])
                else:
                    preds = logits.argmax(1)
                    acc.append(float((preds == test.labels).float().mean()))
                    bal.append(balanced_accuracy(preds, test.labels, ctx.data.spec.n_classes))
        plain[k], balanced[k] = sum(acc) / len(acc), sum(bal) / len(bal)
    kmax = max(plain)
    res = {f"coherence_cond_k{k}": v for k, v in plain.items()}
    res["coherence_cond_kmax"] = plain[kmax]
    res["coherence_cond_mean"] = sum(plain.values()) / len(plain)
    res.update({f"coherence_cond_bal_k{k}": v for k, v in balanced.items()})
    res["coherence_cond_bal_kmax"] = balanced[kmax]
    res["coherence_cond_bal_mean"] = sum(balanced.values()) / len(balanced)
    if not multilabel:  # kept with the numbers, so a leaderboard can tell a result from chance
        res["coherence_cond_chance"] = 1.0 / int(test.labels.unique().numel())
    return res


def mean_auroc(logits, labels) -> float:
    """Mean over findings of the AUROC of scores (N, C) against 0/1 labels (N, C); findings whose
    labels are all 0 or all 1 in this set have no AUROC and are skipped (nan if none is left)."""
    from sklearn.metrics import roc_auc_score

    scores, truth = logits.float().sigmoid().cpu().numpy(), labels.cpu().numpy()
    aucs = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)]
    return float(sum(aucs) / len(aucs)) if aucs else float("nan")


def chance_corrected_agreement(preds: torch.Tensor, n_classes: int) -> dict:
    """Raw agreement, its chance level, kappa and the majority share of M modalities' labels (M, N).

    p_o: fraction of the N samples on which all M labels agree; p_e = sum_c prod_m p_m(c) with
    p_m(c) modality m's label frequencies; kappa = (p_o - p_e) / (1 - p_e), 0 when p_e = 1."""
    p_o = float((preds == preds[0]).all(0).float().mean())
    freq = torch.stack([torch.bincount(row, minlength=n_classes).double() / preds.shape[1] for row in preds])  # (M, C)
    p_e = float(freq.prod(0).sum())
    kappa = 0.0 if p_e >= 1.0 - 1e-12 else (p_o - p_e) / (1.0 - p_e)
    return {"agreement": p_o, "chance": p_e, "kappa": kappa, "majority": float(freq.max())}


def joint_coherence(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    spec = ctx.data.spec
    clfs = ctx.classifiers
    chunks = []
    for i in range(0, p.joint_n, 500):
        n = min(500, p.joint_n - i)
        out = model.sample(n)
        scored = torch.stack([predict(clfs[m][0], classifier_input(spec.modality(m), out[m])) for m in model.modalities])
        # multi-label: (M, n, C) decisions, one binary label per finding; else (M, n) class labels
        chunks.append((scored > 0).long() if spec.multilabel else scored.argmax(-1))
    preds = torch.cat(chunks, 1)
    if spec.multilabel:  # the agreement of each finding's decisions, averaged over findings
        per = [chance_corrected_agreement(preds[..., c], 2) for c in range(preds.shape[-1])]
        mean = {k: sum(d[k] for d in per) / len(per) for k in ("agreement", "chance", "kappa")}
        return {"coherence_joint": mean["agreement"], "coherence_joint_kappa": mean["kappa"],
                "coherence_joint_chance": mean["chance"]}
    a = chance_corrected_agreement(preds, spec.n_classes)
    return {"coherence_joint": a["agreement"], "coherence_joint_kappa": a["kappa"],
            "coherence_joint_chance": a["chance"], "coherence_joint_majority": a["majority"]}


def classifier_accuracy(ctx) -> dict:
    accs = {f"classifier_acc_{m}": acc for m, (_, acc) in ctx.classifiers.items()}
    accs["classifier_acc_min"] = min(accs.values())
    return accs


COND_KEYS = (
    MetricKey("coherence_cond_bal_kmax", "higher", "balanced accuracy of generated modalities given all others but "
              "one (k = M-1), the same task at every M", chance="conditional"),
    MetricKey("coherence_cond_bal_mean", "higher", "balanced conditional coherence, mean over k = 1..M-1 (drifts "
              "with M when coherence rises with k)", chance="conditional"),
    MetricKey("coherence_cond_bal_k*", "higher", "balanced accuracy (mean per-class recall; a constant answer scores "
              "1/C) of the classifier on modalities generated from k given ones (multi-label: AUROC)",
              chance="conditional"),
    MetricKey("coherence_cond_kmax", "higher", "plain-accuracy conditional coherence at k = M-1",
              chance="conditional"),
    MetricKey("coherence_cond_mean", "higher", "plain-accuracy conditional coherence, mean over k (as published "
              "tables)", chance="conditional"),
    MetricKey("coherence_cond_k*", "higher", "plain accuracy of the classifier on modalities generated from k given "
              "ones (MoPoE/MMVAE+ protocol; multi-label: AUROC)", chance="conditional"),
    MetricKey("coherence_cond_chance", None, "conditional coherence of a model that ignores its input: "
              "1/C for the C classes of the evaluated test tuples"),
)
JOINT_KEYS = (
    MetricKey("coherence_joint_kappa", "higher", "joint coherence corrected for chance, (p_o - p_e)/(1 - p_e): "
              "0 for collapsed or independent modalities, 1 for perfect agreement", chance="joint"),
    MetricKey("coherence_joint_chance", None, "p_e: the agreement of independent modalities with the samples' "
              "label frequencies"),
    MetricKey("coherence_joint_majority", None, "largest share one class takes of one modality's prior samples "
              "(collapse when > 0.5)"),
    MetricKey("coherence_joint", "higher", "raw agreement p_o: fraction of prior samples whose modalities' labels "
              "all agree (a collapsed model scores 1)", chance="joint"),
)


@hookimpl
def shala_bench_register_metrics():
    return [
        MetricEntry("classifier_accuracy", classifier_accuracy,
                    "test accuracy of the harness's per-modality classifiers (must be high for coherence to mean anything)", 10,
                    keys=(MetricKey("classifier_acc_*", "higher", "test accuracy of the harness classifier of a "
                                    "modality (min: of the weakest)"),)),
        MetricEntry("coherence_conditional", conditional_coherence,
                    "cross-modal coherence per number k of given modalities (MoPoE/MMVAE+ protocol), balanced and plain",
                    20, version=2, keys=COND_KEYS),
        MetricEntry("coherence_joint", joint_coherence,
                    "agreement of the modalities' predicted labels on prior samples, raw and chance-corrected (kappa)",
                    30, version=2, keys=JOINT_KEYS),
    ]
