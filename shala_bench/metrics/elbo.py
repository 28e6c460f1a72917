"""Test-set negative bound: the model's own bound on -log p(x_1..x_M), on held-out data.

What it measures: `model.negative_bound(batch)` (per sample, in nats) averaged over the
whole test split (`test_nll`), with the name of the bound (`test_nll_bound`, the model's
`bound_name`: "elbo" for the ELBO-trained baselines; IWAE-style models name their own).
Bounds of different names are not the same quantity: compare `test_nll` only between
models whose bound has the same name. Single-sample bounds are stochastic; the evaluation
noise is seeded.
"""

from __future__ import annotations

from shala_bench.hookspecs import hookimpl
from shala_bench.registry import MetricEntry, MetricKey


def test_bound(ctx) -> dict:
    total, n = 0.0, 0
    for x, _ in ctx.batches(ctx.test()):
        total += float(ctx.model.negative_bound(x).double().sum())
        n += len(next(iter(x.values())))
    return {"test_nll": total / n, "test_nll_bound": ctx.model.bound_name, "test_bound_n": n}


@hookimpl
def shala_bench_register_metrics():
    return [MetricEntry("test_bound", test_bound,
                        "the model's own negative bound (e.g. -ELBO) per test tuple, averaged over the test split", 40,
                        keys=(MetricKey("test_nll_bound", None, "the name of the bound test_nll evaluates; only "
                                        "equal bounds are ranked together"),
                              MetricKey("test_bound_n", None, "test tuples the bound is averaged over"),
                              MetricKey("test_nll", "lower", "the model's own negative bound (e.g. -ELBO) per test "
                                        "tuple, nats")))]
