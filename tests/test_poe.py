import math

import torch

from shala_bench.distributions import (gaussian_log_prob, kl_to_standard_normal, laplace_log_prob,
                                       product_of_experts)


def test_poe_matches_closed_form():
    torch.manual_seed(0)
    mu = torch.randn(3, 4, 5, dtype=torch.float64)
    logvar = torch.randn(3, 4, 5, dtype=torch.float64)
    out_mu, out_logvar = product_of_experts(mu, logvar)
    var = logvar.exp()
    # closed form with the N(0, 1) prior expert: 1/var = 1 + sum 1/var_m, mu = var * sum mu_m/var_m
    expected_var = 1.0 / (1.0 + (1.0 / var).sum(0))
    expected_mu = expected_var * (mu / var).sum(0)
    torch.testing.assert_close(out_logvar.exp(), expected_var)
    torch.testing.assert_close(out_mu, expected_mu)


def test_poe_density_is_the_normalised_product():
    # the product of the expert densities, renormalised on a grid, is the PoE Gaussian
    mu = torch.tensor([[[0.5]], [[-1.0]]], dtype=torch.float64)
    logvar = torch.tensor([[[math.log(0.5)]], [[math.log(2.0)]]], dtype=torch.float64)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64).unsqueeze(-1)
    log_prod = gaussian_log_prob(grid, torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    for i in range(2):
        log_prod = log_prod + gaussian_log_prob(grid, mu[i, 0], logvar[i, 0])
    w = (log_prod - log_prod.max()).exp()
    w = w / w.sum()
    grid_mean = (w * grid[:, 0]).sum()
    grid_var = (w * (grid[:, 0] - grid_mean) ** 2).sum()
    p_mu, p_logvar = product_of_experts(mu, logvar)
    assert abs(float(p_mu) - float(grid_mean)) < 1e-6
    assert abs(float(p_logvar.exp()) - float(grid_var)) < 1e-6


def test_poe_mask_drops_experts_and_without_prior():
    mu = torch.randn(3, 2, 4)
    logvar = torch.randn(3, 2, 4)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    m_mu, m_lv = product_of_experts(mu, logvar, mask)
    for b in range(2):
        keep = mask[:, b].bool()
        e_mu, e_lv = product_of_experts(mu[keep, b:b + 1], logvar[keep, b:b + 1])
        torch.testing.assert_close(m_mu[b:b + 1], e_mu)
        torch.testing.assert_close(m_lv[b:b + 1], e_lv)
    one_mu, one_lv = product_of_experts(mu[:1], logvar[:1], prior_expert=False)
    torch.testing.assert_close(one_mu, mu[0])
    torch.testing.assert_close(one_lv, logvar[0])


def test_kl_and_laplace_closed_forms():
    mu, logvar = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.1, -0.5]])
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))
    x, loc = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    ref = torch.distributions.Laplace(loc, 0.75).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(laplace_log_prob(x, loc, 0.75), ref)
    # extra leading sample dims on the location broadcast against x
    torch.testing.assert_close(laplace_log_prob(x, loc.expand(5, *loc.shape), 0.75), ref.expand(5, 2))
