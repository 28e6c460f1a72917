"""Every registered model honours the plugin contract on the smoke protocol (M = 3)."""

from __future__ import annotations

import itertools

import pytest
import torch

from shala_bench.data.spec import to_float
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry

MODELS = sorted(get_registry().models)


@pytest.fixture(scope="module")
def smoke():
    reg = get_registry()
    entry = reg.get_dataset("polymnist-synth")
    p = make_protocol(entry, "smoke")
    assert p.n_modalities == 3
    data = entry.loader(p)
    split = data.splits["test"]
    x = {m: to_float(v[:6]) for m, v in split.data.items()}
    return p, data.spec, x


def subsets(names):
    return [list(S) for k in range(1, len(names) + 1) for S in itertools.combinations(names, k)]


def build(name, smoke):
    p, spec, _ = smoke
    torch.manual_seed(0)
    return get_registry().get_model(name).build(spec, p)


def test_every_baseline_is_registered():
    assert {"mvae", "mmvae", "mopoe", "mmvae+"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_encode_works_for_every_nonempty_subset(name, smoke):
    model = build(name, smoke).eval()
    _, spec, x = smoke
    B = next(iter(x.values())).shape[0]
    dims = set()
    with torch.no_grad():
        for S in subsets(spec.names):
            z = model.encode({m: x[m] for m in S})
            assert z.dim() == 2 and z.shape[0] == B and torch.isfinite(z).all(), (S, z.shape)
            dims.add(z.shape[1])
    assert len(dims) == 1  # one shared latent space whatever the subset


@pytest.mark.parametrize("name", MODELS)
def test_decode_sample_generate_shapes(name, smoke):
    model = build(name, smoke).eval()
    _, spec, x = smoke
    B = next(iter(x.values())).shape[0]
    shape = {m.name: tuple(m.shape) for m in spec.modalities}
    with torch.no_grad():
        z = model.encode(x)
        out = model.decode(z)
        assert set(out) == set(spec.names)
        assert all(out[m].shape == (B, *shape[m]) and torch.isfinite(out[m]).all() for m in out)
        assert set(model.decode(z, ["m1"])) == {"m1"}
        joint = model.sample(5)
        assert set(joint) == set(spec.names) and all(joint[m].shape == (5, *shape[m]) for m in joint)
        for S in subsets(spec.names)[:-1]:  # every proper subset
            targets = [m for m in spec.names if m not in S]
            gen = model.generate({m: x[m] for m in S}, targets)
            assert set(gen) == set(targets), (S, set(gen))
            assert all(gen[t].shape == (B, *shape[t]) and torch.isfinite(gen[t]).all() for t in targets)


@pytest.mark.parametrize("name", MODELS)
def test_loss_is_finite_and_backpropagates_in_every_stage(name, smoke):
    model = build(name, smoke).train()
    _, _, x = smoke
    for stage in model.stages:
        model.begin_stage(stage)
        params = model.stage_parameters(stage)
        model.zero_grad(set_to_none=True)
        loss, logs = model.loss(x, stage)
        assert loss.dim() == 0 and torch.isfinite(loss), (stage, loss)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())
        loss.backward()
        grads = [q.grad for q in params if q.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads), stage


@pytest.mark.parametrize("name", MODELS)
def test_negative_bound_is_per_sample_and_finite(name, smoke):
    model = build(name, smoke).eval()
    _, _, x = smoke
    B = next(iter(x.values())).shape[0]
    with torch.no_grad():
        nb = model.negative_bound(x)
    assert nb.shape == (B,) and torch.isfinite(nb).all()
    assert isinstance(model.bound_name, str) and model.bound_name


@pytest.mark.parametrize("name", MODELS)
def test_built_model_carries_its_resolved_config(name, smoke):
    from shala_bench.config import from_record

    p, _, _ = smoke
    entry = get_registry().get_model(name)
    model = build(name, smoke)
    if entry.config is None:
        assert model.config is None
        return
    resolved = entry.resolve(p).config
    assert model.config == resolved and all(v is not None for v in resolved.to_dict().values())  # inherited: filled
    assert from_record(entry.config, resolved.to_dict()).hash == resolved.hash  # a record's config rebuilds it
