"""MMVAE+: modality-specific w drawn from the auxiliary priors r_m wherever it is not inferred."""

from __future__ import annotations

import math

import torch
from torch.distributions import Laplace

from shala_bench.distributions import laplace_log_prob_latent, log_mean_exp
from conftest import build_model

W_MARK, Z_MARK, SRC_W = 100.0, 7.0, -50.0


def build(config: dict | None = None, **overrides):
    """`overrides`: the recipe's; `config`: MMVAE+'s own settings (w_dim 6 unless given)."""
    return build_model("mmvae+", overrides, {"w_dim": 6, **(config or {})})


def batch(model, B: int = 4):
    return {m: torch.rand(B, 3, 28, 28) for m in model.modalities}


def mock_aux_priors(model):
    """r_m := a point mass (tiny scale) at W_MARK + index(m), so a drawn w names its prior."""
    def aux_prior(m):
        loc = torch.full((model.Dw,), W_MARK + model.modalities.index(m))
        return Laplace(loc, torch.full_like(loc, 1e-6))
    model.aux_prior = aux_prior


def mock_experts(model):
    """Expert j of the given subset: w at SRC_W - j, z at Z_MARK * (j + 1), tiny scales."""
    def experts(x):
        names = model.check_subset(x)
        B = next(iter(x.values())).shape[0]
        w = torch.stack([torch.full((B, model.Dw), SRC_W - j) for j in range(len(names))])
        z = torch.stack([torch.full((B, model.Dz), Z_MARK * (j + 1)) for j in range(len(names))])
        return w, torch.full_like(w, 1e-6), z, torch.full_like(z, 1e-6)
    model.experts = experts


def capture_decoder_inputs(model) -> dict:
    seen = {}
    for m, dec in model.decoders.items():
        dec.register_forward_hook(lambda mod, args, out, m=m: seen.__setitem__(m, args[0].detach()))
    return seen


def test_cross_generation_draws_the_target_w_from_its_aux_prior():
    model = build().eval()
    mock_aux_priors(model)
    mock_experts(model)
    seen = capture_decoder_inputs(model)
    with torch.no_grad():
        out = model.generate({"m0": torch.rand(5, 3, 28, 28)}, ["m1", "m2"])
    assert set(out) == {"m1", "m2"} and out["m1"].shape == (5, 3, 28, 28)
    assert "m0" not in seen  # the source is not decoded
    for i, t in ((1, "m1"), (2, "m2")):
        w, z = seen[t][..., :model.Dw], seen[t][..., model.Dw:]
        torch.testing.assert_close(w, torch.full_like(w, W_MARK + i), atol=1e-3, rtol=0)  # from r_t, not the source
        torch.testing.assert_close(z, torch.full_like(z, Z_MARK), atol=1e-3, rtol=0)  # z from the source's expert


def test_contract_decode_draws_w_from_the_aux_priors():
    model = build().eval()
    mock_aux_priors(model)
    seen = capture_decoder_inputs(model)
    z = torch.randn(3, model.Dz)
    with torch.no_grad():
        model.decode(z)
    for i, m in enumerate(model.modalities):
        torch.testing.assert_close(seen[m][:, :model.Dw], torch.full((3, model.Dw), W_MARK + i), atol=1e-3, rtol=0)
        torch.testing.assert_close(seen[m][:, model.Dw:], z)


def test_training_uses_own_w_for_self_and_aux_w_for_cross_reconstruction():
    model = build()
    mock_aux_priors(model)
    mock_experts(model)
    seen = capture_decoder_inputs(model)
    K = 2
    with torch.no_grad():
        model.log_weights(batch(model), K=K, beta=1.0)
    M = len(model.modalities)
    for d, m in enumerate(model.modalities):
        u = seen[m]  # (M sources, K, B, D_w + D_z)
        assert u.shape[:2] == (M, K)
        for r in range(M):
            w_want = SRC_W - r if r == d else W_MARK + d
            torch.testing.assert_close(u[r, ..., :model.Dw], torch.full_like(u[r, ..., :model.Dw], w_want),
                                       atol=1e-3, rtol=0)
            torch.testing.assert_close(u[r, ..., model.Dw:], torch.full_like(u[r, ..., model.Dw:], Z_MARK * (r + 1)),
                                       atol=1e-3, rtol=0)


def test_aux_prior_scales_are_learned_through_the_cross_reconstructions():
    model = build()
    loss, logs = model.loss(batch(model))
    loss.backward()
    g = model.r_logits.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.isfinite(logs["bound"])


def test_one_sample_bound_is_the_mean_over_experts_of_the_log_weight():
    model = build().eval()
    x = batch(model)
    with torch.no_grad():
        torch.manual_seed(3)
        lw = model.log_weights(x, K=1, beta=1.0)
        torch.manual_seed(3)
        torch.testing.assert_close(model.bound(x, K=1), lw[:, 0].mean(0))
        torch.manual_seed(3)
        lw3 = model.log_weights(x, K=3, beta=1.0)
        torch.manual_seed(3)
        torch.testing.assert_close(model.bound(x, K=3), log_mean_exp(lw3, 1).mean(0))


def test_posteriors_and_priors_are_laplace_with_the_reference_scales():
    model = build().eval()
    x = batch(model)
    with torch.no_grad():
        w_loc, w_sc, z_loc, z_sc = model.experts(x)
        # softmax scale times the block size: the scales of one sample average to 1
        torch.testing.assert_close(w_sc.mean(-1), torch.ones_like(w_sc.mean(-1)), atol=1e-4, rtol=0)
        torch.testing.assert_close(z_sc.mean(-1), torch.ones_like(z_sc.mean(-1)), atol=1e-4, rtol=0)
        r = model.aux_prior("m0")
        assert isinstance(r, Laplace) and torch.allclose(r.scale, torch.ones(model.Dw), atol=1e-4)  # init: scale 1
        lp = laplace_log_prob_latent(torch.zeros(model.Dz), torch.zeros(()), torch.ones(()))
        assert math.isclose(float(lp), -model.Dz * math.log(2), rel_tol=1e-6)
