import numpy as np
import pytest

from evalctx import smoke_ctx  # noqa: F401 (fixture)
from shala_bench.metrics.probe import latent_probe, probe_accuracy


def blobs(n: int, seed: int, sep: float):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centres = sep * np.eye(4, 8)
    return centres[y] + rng.normal(size=(n, 8)), y


def test_probe_on_a_linearly_separable_toy_is_perfect():
    z_tr, y_tr = blobs(400, 0, sep=20.0)
    z_te, y_te = blobs(200, 1, sep=20.0)
    assert probe_accuracy(z_tr, y_tr, z_te, y_te) == pytest.approx(1.0)


def test_probe_on_labels_independent_of_the_latent_is_near_chance():
    rng = np.random.default_rng(2)
    acc = probe_accuracy(rng.normal(size=(400, 8)), rng.integers(0, 4, 400),
                         rng.normal(size=(400, 8)), rng.integers(0, 4, 400))
    assert acc < 0.4  # chance is 0.25


def test_latent_probe_records_each_modality_and_all(smoke_ctx):
    ctx = smoke_ctx(probe_n=128)
    res = latent_probe(ctx)
    assert res["probe_n_train"] == 128 and res["probe_n_test"] == ctx.protocol.eval_n
    for key in ("probe_m0", "probe_m1", "probe_m2", "probe_all"):
        assert 0.0 <= res[key] <= 1.0
    assert res["probe_uni_mean"] == pytest.approx(np.mean([res[f"probe_m{i}"] for i in range(3)]))
