"""MoPoE-VAE: subsets as masks, products of experts, the generalized ELBO."""

from __future__ import annotations

import itertools
import math

import torch

from shala_bench.baselines.mopoe import EXACT_MAX_MODALITIES, all_subsets, random_subsets, stratified_pick, subset_poe
from shala_bench.distributions import kl_to_standard_normal, product_of_experts
from conftest import build_model


def build(n_modalities: int = 3, config: dict | None = None, **overrides):
    """`overrides`: the recipe's; `config`: MoPoE's own settings."""
    return build_model("mopoe", {"n_modalities": n_modalities, **overrides}, config)


def batch(model, B: int = 4):
    return {m: torch.rand(B, 3, 28, 28) for m in model.modalities}


def test_full_subset_equals_the_poe_posterior():
    model = build().eval()
    x = batch(model)
    with torch.no_grad():
        mu, logvar, _ = model.experts(x)
        want_mu, want_lv = product_of_experts(mu, logvar, prior_expert=True)
        got_mu, got_lv = model.subset_posterior(x)
        torch.testing.assert_close(got_mu, want_mu)
        torch.testing.assert_close(got_lv, want_lv)
        # the full subset is the last row of the mask matrix; the batched products agree
        s_mu, s_lv = subset_poe(mu, logvar, all_subsets(3))
        torch.testing.assert_close(s_mu[-1], want_mu)
        torch.testing.assert_close(s_lv[-1], want_lv)
        torch.testing.assert_close(model.encode(x), want_mu)


def test_every_subset_product_matches_a_loop_over_subsets():
    # prior expert only in the full subset (reference poe_fusion); every other product has none
    torch.manual_seed(1)
    M, B, D = 4, 3, 5
    mu, logvar = torch.randn(M, B, D), torch.randn(M, B, D)
    masks = all_subsets(M)
    got_mu, got_lv = subset_poe(mu, logvar, masks)
    rows = {tuple(int(v) for v in r): i for i, r in enumerate(masks)}
    assert len(rows) == 2**M - 1 and all(sum(r) > 0 for r in rows)
    for k in range(1, M + 1):
        for S in itertools.combinations(range(M), k):
            key = tuple(int(i in S) for i in range(M))
            w_mu, w_lv = product_of_experts(mu[list(S)], logvar[list(S)], prior_expert=(k == M))
            torch.testing.assert_close(got_mu[rows[key]], w_mu)
            torch.testing.assert_close(got_lv[rows[key]], w_lv)


def test_subset_posterior_of_a_partial_subset_has_no_prior_expert():
    model = build().eval()
    x = batch(model)
    with torch.no_grad():
        mu, logvar, _ = model.experts({"m0": x["m0"], "m2": x["m2"]})
        want = product_of_experts(mu, logvar, prior_expert=False)
        got = model.subset_posterior({"m0": x["m0"], "m2": x["m2"]})
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        # a single modality is its own expert
        torch.testing.assert_close(model.encode({"m1": x["m1"]}), model.encoders["m1"](x["m1"])[0])


def test_reconstruction_subsets_are_stratified_over_the_batch():
    torch.manual_seed(2)
    counts = torch.bincount(stratified_pick(7, 30), minlength=7)
    assert counts.min() == 4 and counts.max() == 5 and counts.sum() == 30
    distinct = stratified_pick(1023, 128)  # more subsets than samples: all different
    assert len(distinct.unique()) == 128


def test_random_subsets_are_uniform_over_nonempty_subsets():
    torch.manual_seed(3)
    N, M = 70000, 3
    masks = random_subsets(N, M)
    assert (masks.sum(1) > 0).all()
    codes = (masks * 2 ** torch.arange(M)).sum(1).long()
    freq = torch.bincount(codes, minlength=2**M)[1:].float() / N
    tol = 4 * math.sqrt((1 / 7) * (6 / 7) / N)
    assert ((freq - 1 / 7).abs() < tol).all(), freq


def test_elbo_kl_term_is_the_mean_kl_over_all_subsets():
    model = build(beta=1.0).eval()
    x = batch(model)
    with torch.no_grad():
        torch.manual_seed(4)
        e1 = model.elbo(x, beta=1.0)
        torch.manual_seed(4)
        e0 = model.elbo(x, beta=0.0)  # same noise, reconstruction only
        mu, logvar, _ = model.experts(x)
        kls = []
        for k in range(1, 4):
            for S in itertools.combinations(range(3), k):
                kls.append(kl_to_standard_normal(*product_of_experts(mu[list(S)], logvar[list(S)], prior_expert=k == 3)))
        torch.testing.assert_close(e0 - e1, torch.stack(kls).mean(0), rtol=1e-4, atol=1e-3)


def test_many_modalities_use_sampled_subsets_and_stay_finite():
    M = EXACT_MAX_MODALITIES + 1
    model = build(n_modalities=M, latent_dim=8)
    x = batch(model, B=3)
    loss, _ = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.encoders.parameters())
