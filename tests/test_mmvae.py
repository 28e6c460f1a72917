"""MMVAE: the stratified mixture, the IWAE bound and the DReG estimator."""

from __future__ import annotations

import math

import torch

from shala_bench.distributions import LOG2PI, dreg_surrogate, gaussian_log_prob, log_mean_exp
from conftest import build_model


def build(name: str = "mmvae", config: dict | None = None, **overrides):
    """`overrides`: the recipe's; `config`: the model's own settings (e.g. {"K": 3})."""
    return build_model(name, overrides, config)


def batch(model, B: int = 4) -> dict[str, torch.Tensor]:
    return {m: torch.rand(B, 3, 28, 28) for m in model.modalities}


def fake_experts(model, gap: float = 10.0):
    """Experts with means gap * (j + 1) in every dimension and a tiny variance: a sample tells its expert."""

    def experts(x):
        names = model.check_subset(x)
        B = next(iter(x.values())).shape[0]
        mu = torch.stack([torch.full((B, model.protocol.latent_dim), gap * (j + 1)) for j in range(len(names))])
        return mu, torch.full_like(mu, -20.0), names

    return experts


# ---------------------------------------------------------------- toy Gaussian model
# p(z) = N(0, 1), p(x | z) = N(a z, 1), q(z) = N(mu, exp(log_s)^2); one observation x.
X, A0, MU0, LOGS0 = 1.5, 0.8, 0.3, -0.4


def toy_log_w(z, mu, log_s, a, detach_q: bool):
    q_mu, q_ls = (mu.detach(), log_s.detach()) if detach_q else (mu, log_s)
    log_px = -0.5 * (LOG2PI + (X - a * z) ** 2)
    log_pz = -0.5 * (LOG2PI + z**2)
    log_q = gaussian_log_prob(z.unsqueeze(-1), q_mu.unsqueeze(-1), 2 * q_ls.unsqueeze(-1))
    return log_px + log_pz - log_q


def toy_gradients(estimator: str, K: int = 5, R: int = 40000):
    """Per-replicate gradients (R, 3) of (mu, log_s, a) for one of: iwae, dreg, stl (no second weight)."""
    mu = torch.full((R,), MU0, dtype=torch.float64, requires_grad=True)
    log_s = torch.full((R,), LOGS0, dtype=torch.float64, requires_grad=True)
    a = torch.full((R,), A0, dtype=torch.float64, requires_grad=True)
    z = mu + log_s.exp() * torch.randn(K, R, dtype=torch.float64)  # (K, R)
    if estimator == "iwae":
        objective = log_mean_exp(toy_log_w(z, mu, log_s, a, detach_q=False), 0)
    elif estimator == "dreg":
        objective = dreg_surrogate(toy_log_w(z, mu, log_s, a, detach_q=True), z, 0)
    else:  # weighted path gradient without DReG's second weight: biased for K > 1
        lw = toy_log_w(z, mu, log_s, a, detach_q=True)
        objective = (torch.softmax(lw.detach(), 0) * lw).sum(0)
    objective.sum().backward()
    return torch.stack([mu.grad, log_s.grad, a.grad], 1)


def test_dreg_expectation_matches_iwae_gradient_on_toy_gaussian():
    torch.manual_seed(1)
    g_iwae, g_dreg = toy_gradients("iwae"), toy_gradients("dreg")
    diff = g_iwae.mean(0) - g_dreg.mean(0)
    se = (g_iwae.var(0) / len(g_iwae) + g_dreg.var(0) / len(g_dreg)).sqrt()
    assert (diff.abs() < 4 * se).all(), (diff, se)
    assert (g_iwae.mean(0).abs() > 10 * se).all()  # the gradient is far from zero: the match is informative
    # DReG is the lower-variance estimator for the encoder parameters (its reason to exist)
    assert (g_dreg[:, :2].var(0) < g_iwae[:, :2].var(0)).all()


def test_dropping_the_second_dreg_weight_biases_the_encoder_gradient():
    # the hook in dreg_surrogate is what makes the estimator unbiased: without it the mean moves
    torch.manual_seed(2)
    g_iwae, g_stl = toy_gradients("iwae", K=10), toy_gradients("stl", K=10)
    diff = (g_iwae.mean(0) - g_stl.mean(0))[:2]
    se = (g_iwae.var(0) / len(g_iwae) + g_stl.var(0) / len(g_stl)).sqrt()[:2]
    assert (diff.abs() > 5 * se).any(), (diff, se)


def test_iwae_with_one_sample_equals_the_elbo_on_toy_gaussian():
    torch.manual_seed(3)
    R = 200000
    mu, log_s, a = (torch.tensor(v, dtype=torch.float64) for v in (MU0, LOGS0, A0))
    z = mu + log_s.exp() * torch.randn(1, R, dtype=torch.float64)
    lw = toy_log_w(z, mu, log_s, a, detach_q=False)
    iwae1 = log_mean_exp(lw, 0)
    assert torch.equal(iwae1, lw[0])  # K = 1: the log-mean-exp is the identity
    s2 = math.exp(2 * LOGS0)
    elbo = (-0.5 * (LOG2PI + (X - A0 * MU0) ** 2 + A0**2 * s2)  # E_q log p(x|z)
            - 0.5 * (LOG2PI + MU0**2 + s2)  # E_q log p(z)
            + 0.5 * (LOG2PI + 1) + LOGS0)  # entropy of q
    assert abs(float(iwae1.mean()) - elbo) < 4 * float(iwae1.std()) / math.sqrt(R)
    # more samples tighten the bound
    z5 = mu + log_s.exp() * torch.randn(5, R // 5, dtype=torch.float64)
    assert float(log_mean_exp(toy_log_w(z5, mu, log_s, a, detach_q=False), 0).mean()) > elbo + 0.01


def test_mmvae_one_sample_bound_is_the_moe_elbo():
    model = build().eval()
    x = batch(model)
    with torch.no_grad():
        torch.manual_seed(5)
        lw, z = model.log_weights(x, K=1, beta=1.0, dreg=False)  # (M, 1, B), (M, 1, B, D)
        torch.manual_seed(5)
        bound = model.bound(x, K=1)
        # by hand: log p(X | z) + log p(z) - log (1/M) sum_j q_j(z | x_j), for z drawn from expert r
        mus, lvs = zip(*(model.encoders[m](x[m]) for m in model.modalities))
        normal = torch.distributions.Normal
        for r in range(len(model.modalities)):
            zr = z[r, 0]
            log_px = sum(model.log_likelihood(m, x[m], model.decoders[m](zr)) for m in model.modalities)
            log_pz = normal(0.0, 1.0).log_prob(zr).sum(-1)
            log_q = torch.stack([normal(mu, (0.5 * lv).exp()).log_prob(zr).sum(-1) for mu, lv in zip(mus, lvs)])
            log_q = log_q.logsumexp(0) - math.log(len(mus))
            torch.testing.assert_close(lw[r, 0], log_px + log_pz - log_q, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(bound, lw[:, 0].mean(0))


def test_each_expert_contributes_k_samples_to_the_bound():
    model = build()
    model.experts = fake_experts(model)
    M, K, B = len(model.modalities), 3, 4
    with torch.no_grad():
        lw, z = model.log_weights(batch(model, B), K=K, beta=1.0, dreg=False)
    assert lw.shape == (M, K, B) and z.shape == (M, K, B, model.protocol.latent_dim)
    for r in range(M):  # stratified: row r holds exactly the K samples of expert r
        torch.testing.assert_close(z[r], torch.full_like(z[r], 10.0 * (r + 1)), atol=1e-3, rtol=0)


def test_generate_picks_each_expert_of_the_subset_uniformly():
    model = build()
    model.experts = fake_experts(model)
    model.decode = lambda z, modalities=None: {m: z for m in modalities}
    B = 6000
    for subset in (["m0", "m2"], ["m0", "m1", "m2"]):
        torch.manual_seed(7)
        z = model.generate({m: torch.zeros(B, 3, 28, 28) for m in subset}, ["m1"])["m1"][:, 0]
        which = (z / 10.0).round().long() - 1  # expert index of each sample
        freq = torch.bincount(which, minlength=len(subset)).float() / B
        assert len(freq) == len(subset)
        tol = 4 * math.sqrt((1 / len(subset)) * (1 - 1 / len(subset)) / B)
        assert ((freq - 1 / len(subset)).abs() < tol).all(), freq


def test_encode_is_the_mean_of_the_mixture():
    model = build().eval()
    x = batch(model)
    with torch.no_grad():
        mus = [model.encoders[m](x[m])[0] for m in ("m0", "m2")]
        torch.testing.assert_close(model.encode({"m0": x["m0"], "m2": x["m2"]}), (mus[0] + mus[1]) / 2)


def test_dreg_loss_reaches_encoders_and_decoders_and_logs_the_bound():
    model = build(config={"K": 3})
    x = batch(model)
    loss, logs = model.loss(x)
    loss.backward()
    for part in (model.encoders, model.decoders):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    assert torch.isfinite(logs["bound"]) and float(logs["bound"]) < 0
