"""MVAE: the reference's KL warm-up (linear per minibatch over a fraction of the budget), exact across a resume."""

from __future__ import annotations

import pytest
import torch

from shala_bench.distributions import kl_to_standard_normal, product_of_experts
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry
from conftest import build_model


def build(config: dict | None = None, **overrides):
    return build_model("mvae", {"n_modalities": 2, "max_train_samples": 400, "beta": 2.0, **overrides}, config)


def batch(model, B: int = 4):
    g = torch.Generator().manual_seed(0)
    return {m: torch.rand(B, 3, 28, 28, generator=g) for m in model.modalities}


def test_warmup_factor_is_the_references_linear_ramp():
    # span = 0.5 * 400 = 200 samples; B = 4: minibatch n (0-based) has factor (4n + 4) / 200, capped at 1
    model = build({"kl_warmup": 0.5}).train()
    x = batch(model)
    seen = []
    for _ in range(60):
        _, logs = model.loss(x)
        seen.append(float(logs["kl_weight"]))
    want = [2.0 * min(1.0, (4 * n + 4) / 200) for n in range(60)]
    torch.testing.assert_close(torch.tensor(seen), torch.tensor(want))
    assert int(model.samples_seen) == 240
    # evaluation mode (validation, test bound, generation) never anneals and never counts
    model.eval()
    assert model.kl_weight(4) == 2.0
    model.loss(x)
    assert int(model.samples_seen) == 240


def test_the_factor_multiplies_every_kl_term():
    # with the encoder fixed, the loss is linear in the KL weight: L(w) = -rec + w * KL, summed over the ELBOs
    torch.manual_seed(0)
    model = build({"kl_warmup": 1.0}).train()
    x = batch(model, B=8)
    mu_e, logvar_e, _ = model.experts(x)

    def loss_at(seen: int) -> torch.Tensor:
        model.samples_seen.fill_(seen)
        torch.manual_seed(1)  # the same reparameterisation noise at every weight
        return model.loss(x)[0].detach()

    l0, l1, l_full = loss_at(0), loss_at(192), loss_at(10_000)  # weights 2*8/400, 2*200/400, 2
    w0, w1 = 2.0 * 8 / 400, 2.0 * 200 / 400
    # the KL part of the summed ELBOs: the slope of the loss in w
    slope = (l1 - l0) / (w1 - w0)
    torch.testing.assert_close(l_full, l0 + slope * (2.0 - w0), rtol=1e-5, atol=1e-3)
    # and that slope is the summed KL of the joint and unimodal posteriors (M = 2, no random subsets)
    kl = kl_to_standard_normal(*product_of_experts(mu_e, logvar_e)).mean()
    for i in range(2):
        kl = kl + kl_to_standard_normal(*product_of_experts(mu_e[i:i + 1], logvar_e[i:i + 1])).mean()
    torch.testing.assert_close(slope, kl.detach(), rtol=1e-4, atol=1e-3)


def test_the_schedule_is_in_the_state_dict_and_only_with_a_warmup():
    model = build({"kl_warmup": 0.5}).train()
    x = batch(model)
    for _ in range(3):
        model.loss(x)
    resumed = build({"kl_warmup": 0.5})
    resumed.load_state_dict(model.state_dict())
    assert int(resumed.samples_seen) == 12
    assert "samples_seen" not in build().state_dict()  # checkpoints without a warm-up keep their keys
    assert "kl_weight" not in build().train().loss(x)[1]


def test_paper_profile_has_the_references_warmup_and_quick_the_validated_one():
    reg = get_registry()
    ds, mvae = reg.get_dataset("polymnist-synth"), reg.get_model("mvae")
    assert mvae.resolve(make_protocol(ds, "paper", {})).config.kl_warmup == 0.4
    quick = make_protocol(ds, "quick", {})
    # the validated warm-up length in samples, whatever the quick cap
    assert mvae.resolve(quick).config.kl_warmup * quick.max_train_samples == pytest.approx(61_440)
    assert mvae.resolve(make_protocol(ds, "smoke", {})).config.kl_warmup == 0.0
    # the learning-rate warm-up is quick's alone (the reference has none), and the budget the trainer reads has it
    assert mvae.resolve(make_protocol(ds, "paper", {})).config.lr_warmup_samples == 0
    assert mvae.resolve(make_protocol(ds, "smoke", {})).config.lr_warmup_samples == 0
    cfg = mvae.resolve(quick).config
    assert cfg.lr_warmup_samples == 128_000
    model = build_model("mvae", {}, profile="quick")
    assert model.stage_budget("vae").lr_warmup_samples == 128_000
