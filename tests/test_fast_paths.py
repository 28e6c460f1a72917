"""The speed-ups keep every model's numbers: same parameters, same outputs and gradients, same updates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from shala_bench.backbones import Image64Encoder, ImageEncoder
from shala_bench.contract import MultimodalVAE
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry
from shala_bench.trainer import make_optimizer


def _reference_heads(enc: nn.Module, x: torch.Tensor):
    """The heads as the plain convolutions they are declared as."""
    h = enc.trunk(x)
    return enc.mu(h).flatten(1), enc.logvar(h).flatten(1)


@pytest.mark.parametrize("cls, size", [(ImageEncoder, 28), (Image64Encoder, 64)])
def test_encoder_heads_as_one_matmul_match_the_convolutions_and_their_gradients(cls, size):
    torch.manual_seed(0)
    enc = cls(16)
    ref = copy.deepcopy(enc)
    x = torch.rand(5, 3, size, size)
    mu, lv = enc(x)
    mu_r, lv_r = _reference_heads(ref, x)
    assert mu.shape == mu_r.shape == (5, 16)
    torch.testing.assert_close(mu, mu_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lv, lv_r, atol=1e-5, rtol=1e-5)
    (mu.pow(2).sum() + lv.exp().sum()).backward()
    (mu_r.pow(2).sum() + lv_r.exp().sum()).backward()
    for (name, p), p_r in zip(enc.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_r.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def smoke_data():
    reg = get_registry()
    ds = reg.get_dataset("polymnist-synth")
    p = make_protocol(ds, "smoke", {"n_modalities": 4})
    return reg, p, ds.loader(p, None)


# parameter counts at M = 3, latent 32 (smoke profile), from the per-modality modules before the speed work
PARAMS_M3 = {"mvae": 1155273, "mmvae": 1155273, "mopoe": 1155273, "mmvae+": 1745385, "shala-fused": 1886121,
             "shala-noprior": 1176137}


@pytest.mark.parametrize("name", sorted(PARAMS_M3))
def test_parameter_counts_and_state_dict_layout_are_unchanged(name):
    reg = get_registry()
    ds = reg.get_dataset("polymnist-synth")
    p = make_protocol(ds, "smoke", {"n_modalities": 3})
    data = ds.loader(p, None)
    model: MultimodalVAE = reg.get_model(name).build(data.spec, p)
    assert sum(q.numel() for q in model.parameters()) == PARAMS_M3[name]
    # the per-modality modules keep their names, so checkpoints written before load as they are
    keys = set(model.state_dict())
    assert {f"encoders.m{i}.mu.weight" for i in range(3)} <= keys
    assert {f"decoders.m{i}.deconv.4.weight" for i in range(3)} <= keys


def test_fused_adam_takes_the_plain_adam_step_and_resumes_from_its_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    twin = copy.deepcopy(net)
    fused, plain = make_optimizer(net.parameters(), 1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2)
    xs = torch.randn(4, 3, 6)
    for i, x in enumerate(xs):
        if i == 2:  # a checkpoint written by the plain optimizer resumes under the fused one
            fused = make_optimizer(net.parameters(), 1e-2)
            fused.load_state_dict(copy.deepcopy(plain.state_dict()))
            with torch.no_grad():
                for q, q_t in zip(net.parameters(), twin.parameters()):
                    q.copy_(q_t)
        for model, opt in ((net, fused), (twin, plain)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for q, q_t in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(q, q_t, atol=1e-6, rtol=1e-5)


def test_dreg_gradient_hook_survives_bf16_autocast(smoke_data):
    reg, p, data = smoke_data
    torch.manual_seed(0)
    model = reg.get_model("mmvae").build(data.spec, p)
    x = {m: v[:4].float() / 255 for m, v in data.splits["train"].data.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(x)
    loss.backward()  # the hook used to fail: "hook '<lambda>' has changed the type of value"
    grads = [q.grad for q in model.encoders.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
