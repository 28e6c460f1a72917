import numpy as np
import pytest
import scipy.linalg
import torch

from evalctx import smoke_ctx  # noqa: F401 (fixture)
from shala_bench.metrics.frechet import frechet_distance, gaussian_statistics, in_domain_frechet


def direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), straight from the definition."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_frechet_distance_of_a_feature_set_to_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 16))
    stats = gaussian_statistics(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_sqrtm_formula_on_random_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(loc=0.7, size=(300, 8)) @ rng.normal(size=(8, 8))
    got = frechet_distance(gaussian_statistics(torch.from_numpy(a)), gaussian_statistics(b))
    assert got == pytest.approx(direct_frechet(a, b), rel=1e-6)
    assert got > 1.0  # different means and covariances: far from 0


def test_frechet_distance_of_shifted_isotropic_gaussians_is_the_squared_shift():
    # equal covariances: the trace term vanishes and FD = ||mu_1 - mu_2||^2
    base = np.random.default_rng(2).normal(size=(1000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(gaussian_statistics(base), gaussian_statistics(base + shift)) == pytest.approx(
        float((shift ** 2).sum()), rel=1e-6)


def test_in_domain_fd_is_zero_for_a_model_that_returns_the_test_set(smoke_ctx):
    ctx = smoke_ctx(oracle=True)
    res = in_domain_frechet(ctx)
    mods = ctx.model.modalities
    assert res["fd_n"] == ctx.protocol.fd_n and res["fd_extractor"] == "harness-classifier-penultimate"
    for m in mods:
        assert res[f"fd_joint_{m}"] == pytest.approx(0.0, abs=1e-6)
    for k in range(1, len(mods)):
        assert res[f"fd_cond_k{k}"] == pytest.approx(0.0, abs=1e-6)


def test_in_domain_fd_of_an_untrained_model_is_positive(smoke_ctx):
    res = in_domain_frechet(smoke_ctx())
    assert res["fd_mean"] > 1e-3 and np.isfinite(res["fd_cond_mean"])
    assert res["fd_mean"] == pytest.approx(np.mean([res[f"fd_joint_m{i}"] for i in range(3)]))
