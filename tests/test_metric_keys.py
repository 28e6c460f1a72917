"""Every key a built-in metric writes is declared by its MetricEntry, and evaluation stamps metric versions."""

import pytest

from evalctx import smoke_ctx  # noqa: F401 (fixture)
from shala_bench.evaluate import VERSIONS_KEY, evaluate
from shala_bench.registry import MetricEntry, MetricKey, get_registry


def test_every_key_the_built_in_metrics_write_is_declared_with_a_direction_or_as_unranked(smoke_ctx, tmp_path):
    ctx = smoke_ctx()
    metrics, _, _ = evaluate(ctx.model, ctx.protocol, ctx.data, tmp_path, 0)
    reg = get_registry()
    assert metrics[VERSIONS_KEY] == {name: r.entry.version for name, r in reg.metrics.items()}
    assert metrics[VERSIONS_KEY]["coherence_joint"] == 2 and metrics[VERSIONS_KEY]["frechet"] == 1
    undeclared = [k for k in metrics if k != VERSIONS_KEY and reg.metric_key(k) is None]
    assert not undeclared
    ranked = {k: reg.metric_key(k)[1].direction for k in metrics if k != VERSIONS_KEY}
    assert ranked["coherence_cond_bal_kmax"] == "higher" and ranked["fd_cond_k2"] == "lower"
    assert ranked["coherence_cond_chance"] is None and ranked["fd_n"] is None


def test_a_key_is_described_by_the_first_pattern_that_matches_it():
    e = MetricEntry("x", dict, "x", keys=(MetricKey("a_kmax", "higher", "k = M - 1"),
                                          MetricKey("a_k*", "lower", "per k")))
    assert e.key("a_kmax").description == "k = M - 1" and e.key("a_k3").direction == "lower"
    assert e.key("b") is None
    with pytest.raises(ValueError, match="direction"):
        MetricKey("a", "up", "")
