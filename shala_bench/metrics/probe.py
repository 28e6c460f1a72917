"""Latent probe: how linearly decodable the label is from the shared latent.

What it measures (MoPoE's latent-representation evaluation): a scikit-learn logistic
regression is fitted on `encode` of each single modality, and of all modalities
together, for `probe_n` training tuples, and its accuracy on the first `eval_n` test
tuples is recorded (`probe_<m>`, `probe_all`; mean of the unimodal ones `probe_uni_mean`).
The latent is the posterior mean the model's `encode` returns. Features are standardised
with the training encodings' mean and std; the regression is L2-regularised (C = 1),
deterministic (lbfgs). Multi-label datasets are skipped.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from shala_bench.hookspecs import hookimpl
from shala_bench.registry import MetricEntry, MetricKey


def probe_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a logistic regression fitted on (z_train, y_train)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:  # one class only: the trivial classifier is what the probe would learn
        return float(np.mean(y_test == y_train[0]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(z_train, y_train)
    return float(clf.score(z_test, y_test))


def _encodings(ctx, split, subsets: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """{name: (N, D) encodings of split from the modalities of subsets[name]}."""
    out: dict[str, list[Tensor]] = {name: [] for name in subsets}
    for x, _ in ctx.batches(split.to(ctx.device)):
        for name, mods in subsets.items():
            out[name].append(ctx.model.encode({m: x[m] for m in mods}).detach().float().cpu())
    return {name: torch.cat(v).flatten(1).numpy() for name, v in out.items()}


def latent_probe(ctx) -> dict:
    model, p = ctx.model, ctx.protocol
    if ctx.data.spec.multilabel:
        return {"probe_unavailable": "multi-label dataset: the probe is defined for single labels"}
    if p.probe_n <= 0:
        return {"probe_unavailable": "probe_n = 0 in this protocol: no training encodings to fit the probe on"}
    train = ctx.data.splits["train"].head(p.probe_n)
    test = ctx.data.splits["test"].head(p.eval_n)
    subsets = {m: [m] for m in model.modalities}
    subsets["all"] = list(model.modalities)
    z_tr, z_te = _encodings(ctx, train, subsets), _encodings(ctx, test, subsets)
    y_tr, y_te = train.labels.numpy(), test.labels.numpy()
    res: dict = {"probe_n_train": len(train), "probe_n_test": len(test)}
    for name in subsets:
        res[f"probe_{name}"] = probe_accuracy(z_tr[name], y_tr, z_te[name], y_te)
    res["probe_uni_mean"] = float(np.mean([res[f"probe_{m}"] for m in model.modalities]))
    return res


@hookimpl
def shala_bench_register_metrics():
    return [MetricEntry("probe", latent_probe,
                        "logistic-regression accuracy on encode() of each modality and of all (MoPoE's latent "
                        "representation evaluation)", 50,
                        keys=(MetricKey("probe_n_*", None, "encodings the probe is fitted on (train) and tested on (test)"),
                              MetricKey("probe_unavailable", None, "why no probe was fitted"),
                              MetricKey("probe_uni_mean", "higher", "latent-probe accuracy, mean over single modalities"),
                              MetricKey("probe_*", "higher", "test accuracy of a logistic regression on encode() of "
                                        "one modality (probe_all: of all modalities)")))]
