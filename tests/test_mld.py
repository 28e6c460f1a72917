"""MLD: the multi-time masked objective, conditional sampling against a closed form, re-imposed observed codes,
its settings, and a smoke run end to end."""

from __future__ import annotations

import pytest
import torch

from conftest import build_model, smoke_spec
from shala_bench.errors import ProtocolError
from shala_bench.launch import run_one
from shala_bench.plugins.mld import MLD, MultiTimeDenoiser, proper_subsets


def mld(M: int = 3, D: int = 2, **config) -> MLD:
    return build_model("mld", {"n_modalities": M, "latent_dim": D}, config)


class Spy(torch.nn.Module):
    """A fixed random linear 'denoiser' that records what it is given."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim, self.calls = dim, []
        self.w = torch.nn.Parameter(torch.randn(dim, dim) * 0.3)

    def forward(self, z_t, tau):
        self.calls.append((z_t.detach().clone(), tau.clone()))
        return z_t @ self.w + 0.1 * tau.float().repeat_interleave(self.dim // tau.shape[1], 1)


# ---------------------------------------------------------------- the multi-time masked objective
@pytest.mark.parametrize("target", ["v", "eps"])
def test_conditioning_modalities_stay_clean_at_time_zero_and_the_loss_is_the_masked_mse(target):
    model = mld(M=3, D=2, target=target)
    model.denoiser = spy = Spy(6)
    Z, eps = torch.randn(4, 6), torch.randn(4, 6)
    A = torch.tensor([[True, True, True], [False, True, False], [True, False, True], [False, False, True]])
    t = torch.tensor([1, 7, 30, 50])
    loss = model.multi_time_loss(Z, A, t, eps)
    (z_t, tau), = spy.calls
    assert torch.equal(tau, torch.where(A, t[:, None], 0))  # τ(A, t): 0 for the conditioning set C
    mask = A.repeat_interleave(2, 1)
    assert torch.equal(z_t[~mask], Z[~mask])  # C is kept clean
    # by hand, sample by sample, on the diffused dimensions only
    ab = model.diffusion.alpha_bar
    for i in range(4):
        a = ab[t[i] - 1]
        m = mask[i]
        noised = a.sqrt() * Z[i] + (1 - a).sqrt() * eps[i]
        torch.testing.assert_close(z_t[i][m], noised[m])
        goal = a.sqrt() * eps[i] - (1 - a).sqrt() * Z[i] if target == "v" else eps[i]
        out = z_t[i] @ spy.w + 0.1 * tau[i].float().repeat_interleave(2)
        torch.testing.assert_close(loss[i], (out - goal)[m].pow(2).mean())


def test_conditioning_modalities_contribute_no_gradient():
    model = mld(M=3, D=2)
    out = torch.zeros(4, 6, requires_grad=True)

    class Leaf(torch.nn.Module):  # the prediction itself as the leaf
        def forward(self, z_t, tau):
            return out

    model.denoiser = Leaf()
    A = torch.tensor([[True, False, False], [False, True, True], [True, True, True], [False, False, True]])
    model.multi_time_loss(torch.randn(4, 6), A).sum().backward()
    assert torch.all(out.grad[~A.repeat_interleave(2, 1)] == 0)
    assert torch.all(out.grad[A.repeat_interleave(2, 1)] != 0)


def test_training_draws_the_unconditional_case_with_probability_one_minus_d():
    torch.manual_seed(0)
    model = mld(M=3, cond_prob=0.2)
    A = model.diffused_sets(20_000)
    joint = A.all(1)
    assert abs(float(joint.float().mean()) - 0.8) < 0.015
    assert bool(A.any(1).all())  # something is always generated
    subsets = proper_subsets(20_000, 3, "cpu")
    assert bool((subsets.any(1) & ~subsets.all(1)).all())  # proper, non-empty
    counts = torch.bincount((subsets.long() * torch.tensor([1, 2, 4])).sum(1), minlength=8)[1:7].float()
    assert float((counts / counts.sum() - 1 / 6).abs().max()) < 0.015  # uniform over the 6 proper subsets


# ---------------------------------------------------------------- conditional sampling on a Gaussian toy
# Z = (z^1, z^2) ~ N(m, Σ), one number per modality: p(z^2 | z^1) is Gaussian in closed form.
MEAN = torch.tensor([0.5, -1.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]])


def closed_form(z1: float) -> tuple[float, float]:
    return float(MEAN[1] + COV[1, 0] / COV[0, 0] * (z1 - MEAN[0])), float(COV[1, 1] - COV[1, 0] ** 2 / COV[0, 0])


class ExactMultiTime(torch.nn.Module):
    """The exact multi-time prediction for the Gaussian toy: per modality h_m = sqrt(ᾱ_{τ_m}), n_m = 1 − ᾱ (clean:
    h = 1, n = 0), E[Z_0 | Z_t] = m + Σ H (H Σ H + N)^{-1} (Z_t − H m), then v or ε on every dimension."""

    dim = 2

    def __init__(self, alpha_bar: torch.Tensor, target: str):
        super().__init__()
        self.alpha_bar, self.target = alpha_bar, target

    def forward(self, z, tau):
        ab = torch.where(tau > 0, self.alpha_bar[(tau - 1).clamp(min=0)], torch.ones(()))  # (B, 2)
        H, N = torch.diag_embed(ab.sqrt()), torch.diag_embed(1 - ab)
        gain = COV @ H @ torch.linalg.inv(H @ COV @ H + N + 1e-9 * torch.eye(2))
        z0 = MEAN + (gain @ (z - ab.sqrt() * MEAN)[..., None])[..., 0]
        eps = (z - ab.sqrt() * z0) / (1 - ab).clamp(min=1e-12).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * z0 if self.target == "v" else eps


@pytest.mark.parametrize("target", ["v", "eps"])
def test_conditional_sampling_with_the_exact_denoiser_matches_the_closed_form(target):
    model = mld(M=2, D=1, target=target, diffusion_T=1000, sample_steps=200)
    model.denoiser = ExactMultiTime(model.diffusion.alpha_bar, target)
    n, z1 = 4000, 1.5
    torch.manual_seed(1)
    Z_obs = torch.tensor([[z1, 0.0]]).expand(n, 2)
    keep = torch.tensor([[True, False]]).expand(n, 2)
    Z = model.reverse(Z_obs, keep)
    mean, var = closed_form(z1)
    assert torch.all(Z[:, 0] == z1)
    assert abs(float(Z[:, 1].mean()) - mean) < 0.03, (float(Z[:, 1].mean()), mean)
    assert abs(float(Z[:, 1].var()) - var) < 0.05, (float(Z[:, 1].var()), var)
    joint = model.reverse(torch.zeros(n, 2), torch.zeros(n, 2, dtype=torch.bool))  # the unconditional case
    assert torch.allclose(joint.mean(0), MEAN, atol=0.05) and torch.allclose(joint.T.cov(), COV, atol=0.08)


def test_the_masked_objective_learns_the_conditional_on_a_gaussian_toy():
    """Trained with the multi-time loss (d = 0.5), one network samples p(z^2 | z^1) near the closed form."""
    torch.manual_seed(0)
    model = mld(M=2, D=1, diffusion_T=100, sample_steps=50, cond_prob=0.5)
    model.denoiser = MultiTimeDenoiser(2, 1, width=64, depth=2, T=100)
    opt = torch.optim.Adam(model.denoiser.parameters(), lr=3e-3)
    chol = torch.linalg.cholesky(COV)
    steps = 400  # over seeds 0, 5, 10: mean off by at most 0.031, variance by 0.084 (800 steps: 0.027, 0.070)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    for _ in range(steps):
        Z = MEAN + torch.randn(512, 2) @ chol.T
        loss = model.multi_time_loss(Z, model.diffused_sets(512)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.manual_seed(2)
    for z1 in (-0.5, 1.5):
        Z = model.reverse(torch.tensor([[z1, 0.0]]).expand(2000, 2), torch.tensor([[True, False]]).expand(2000, 2))
        mean, var = closed_form(z1)
        assert abs(float(Z[:, 1].mean()) - mean) < 0.1, (z1, float(Z[:, 1].mean()), mean)
        assert abs(float(Z[:, 1].var()) - var) < 0.15, (z1, float(Z[:, 1].var()), var)


# ---------------------------------------------------------------- conditional generation through the model
def test_conditional_generation_reimposes_the_observed_codes_at_every_step():
    model = mld(M=3, D=2, sample_steps=5).eval()
    model.denoiser = spy = Spy(6)
    model.z_mean.copy_(torch.randn(6))
    model.z_std.copy_(torch.rand(6) + 0.5)
    x = {m: torch.rand(4, 3, 28, 28) for m in ("m0", "m2")}
    with torch.no_grad():
        z = model.codes(x)
        Z = model.encode(x)
    observed = model.standardise(torch.cat([z["m0"], torch.zeros(4, 2), z["m2"]], 1))
    assert len(spy.calls) == 5
    for z_t, tau in spy.calls:  # the observed codes enter every step clean, at τ = 0
        assert torch.equal(tau[:, [0, 2]], torch.zeros(4, 2, dtype=torch.long)) and bool((tau[:, 1] > 0).all())
        torch.testing.assert_close(z_t[:, [0, 1, 4, 5]], observed[:, [0, 1, 4, 5]])
    torch.testing.assert_close(Z[:, :2], z["m0"])  # encode: the observed codes as encoded ...
    torch.testing.assert_close(Z[:, 4:], z["m2"])
    assert not torch.allclose(Z[:, 2:4], torch.zeros(4, 2))  # ... and a draw for the missing one
    with torch.no_grad():
        full = {**x, "m1": torch.rand(4, 3, 28, 28)}
        torch.testing.assert_close(model.encode(full), torch.cat([model.codes(full)[m] for m in ("m0", "m1", "m2")], 1))


def test_negative_bound_is_the_reconstruction_loss():
    model = mld(M=2, D=3).eval()
    x = {m: torch.rand(5, 3, 28, 28) for m in ("m0", "m1")}
    with torch.no_grad():
        z = model.codes(x)
        by_hand = -sum(model.log_likelihood(m, x[m], model.decoders[m](z[m])) for m in x)
        assert torch.allclose(model.negative_bound(x), by_hand)
        assert torch.allclose(model.loss(x, "vae")[0], by_hand.mean())  # code_l2 = 0
    assert model.bound_name == "reconstruction"


def test_settings_profile_defaults_and_validation():
    model = mld()
    assert (model.config.diffusion_T, model.config.sample_steps) == (50, 5)  # smoke
    assert model.config.prior_max_samples == model.protocol.max_train_samples  # inherited from the recipe
    with pytest.raises(ProtocolError, match="sample_steps"):
        mld(sample_steps=60)
    with pytest.raises(ProtocolError, match="target"):
        mld(target="score")


# ---------------------------------------------------------------- end to end
def test_smoke_run_passes_end_to_end(results):
    rec = run_one(smoke_spec("mld", results))
    assert rec.ok, rec.status
    assert rec.stages["vae"]["selection"] == "val_loss"  # stage 1 cannot generate yet
    assert rec.stages["prior"]["selection"] == "val_coherence_cond_bal_k1"
    assert rec.metrics["test_nll_bound"] == "reconstruction"
    assert all(0.0 <= rec.metrics[f"coherence_cond_k{k}"] <= 1.0 for k in (1, 2))
