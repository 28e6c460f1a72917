"""shala-fused (the first ShaLa design) and shala-noprior: fused posterior over any subset, two stages, exact resume, ablation."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from conftest import smoke_spec
from shala_bench.data.polymnist_synth import spec_for
from shala_bench.launch import prepare, run_one
from shala_bench.plugins.shala import ShaLaFused, ShaLaVAE, random_subsets
from shala_bench.registry import get_registry
from shala_bench.trainer import Preempted, Trainer
from toytrain import stop_before


def protocol(M: int, **kw):
    entry = get_registry().get_dataset("polymnist-synth")
    from shala_bench.protocol import make_protocol

    return make_protocol(entry, "smoke", {"n_modalities": M, **kw})


def config(name: str, p, **kw):
    """`name`'s own config under recipe `p`, resolved (profile defaults, inherited recipe values) with `kw` set."""
    return get_registry().get_model(name).resolve(p, kw).config


def shala(M: int):
    p = protocol(M)
    return ShaLaFused(spec_for(M), p, config("shala-fused", p))


def images(M: int, B: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(M)
    return {f"m{i}": torch.rand(B, 3, 28, 28, generator=g) for i in range(M)}


@pytest.mark.parametrize("M", [3, 10])
def test_fusion_handles_every_subset(M):
    model = shala(M).eval()
    p = model.protocol
    x = images(M)
    with torch.no_grad():
        h, full = model.embed(x)
        assert h.shape == (4, M, 2 * p.latent_dim) and bool(full.all())
        subsets = [S for k in range(1, M + 1) for S in itertools.combinations(range(M), k)]
        assert len(subsets) == 2**M - 1
        # every non-empty subset, one per row, through the batched fusion
        mask = torch.zeros(len(subsets), M, dtype=torch.bool)
        for r, S in enumerate(subsets):
            mask[r, list(S)] = True
        c, mu, logvar = model.fuse(h[:1].expand(len(subsets), -1, -1), mask)
        assert c.shape == (len(subsets), model.config.embed_dim) and mu.shape == logvar.shape == (len(subsets), p.latent_dim)
        assert bool(torch.isfinite(c).all() and torch.isfinite(mu).all() and torch.isfinite(logvar).all())
        assert len(torch.unique(mu.round(decimals=5), dim=0)) == len(subsets)  # each subset its own posterior
        # encode from a dict subset sees only that subset: absent modalities do not leak in
        for S in subsets[:: max(1, len(subsets) // 25)]:
            names = [f"m{i}" for i in S]
            got = model.encode({m: x[m] for m in names})
            sub_mask = torch.zeros(4, M, dtype=torch.bool)
            sub_mask[:, list(S)] = True
            assert torch.allclose(got, model.fuse(h, sub_mask)[1], atol=1e-5), S
            out = model.decode(got, names)
            assert set(out) == set(names) and out[names[0]].shape == (4, 3, 28, 28)


def test_fusion_cost_is_linear_in_M():
    sizes = {M: sum(q.numel() for n, q in shala(M).named_parameters()
                    if n.startswith(("fusion", "absent"))) for M in (2, 3, 4, 10)}
    per_modality = sizes[3] - sizes[2]
    assert sizes[4] - sizes[3] == per_modality and sizes[10] - sizes[2] == 8 * per_modality


def test_modality_dropout_never_drops_everything():
    M, p = 5, protocol(5)
    model = ShaLaVAE(spec_for(M), p, config("shala-noprior", p, modality_dropout=0.5))
    S = model.modality_dropout(20_000)
    assert bool(S.any(1).all())  # never the empty set
    joint = S.all(1)
    assert abs(float(joint.float().mean()) - 0.5) < 0.02  # dropout w.p. p; a dropped sample is a proper subset
    sizes = S[~joint].sum(1)
    counts = torch.bincount(sizes, minlength=M)[1:M].float() / len(sizes)
    assert torch.allclose(counts, torch.full((M - 1,), 1 / (M - 1)), atol=0.02)  # |S| uniform on 1..M-1
    masks = random_subsets(10_000, M, 1, M, "cpu")
    assert bool(masks.any(1).all()) and int(masks.sum(1).max()) == M


def test_loss_is_the_stage_objective_and_bound_is_finite():
    M = 3
    model = shala(M)
    x = images(M, 8)
    vae, logs = model.loss(x, "vae")
    assert vae.dim() == 0 and {"rec", "kl"} <= set(logs)
    prior, logs = model.loss(x, "prior")
    assert prior.dim() == 0 and "diffusion_mse" in logs
    # the prior stage's loss reaches only the denoiser
    prior.backward()
    assert all(q.grad is None for q in model.stage_one_parameters())
    assert all(q.grad is not None for q in model.denoiser.parameters())
    nb = model.negative_bound(x)
    assert nb.shape == (8,) and bool(torch.isfinite(nb).all()) and model.bound_name == "elbo"


def _train(prep, data, run_dir, stop_at_prior_step=None, resume=False):
    torch.manual_seed(0)
    model = prep.model_entry.build(data.spec, prep.protocol, prep.config)
    trainer = Trainer(model, prep.protocol, data.splits["train"], run_dir, seed=0, progress=False)
    if stop_at_prior_step is not None:
        stop_before(trainer, model, stop_at_prior_step, "prior")
    trainer.fit(resume=resume)
    return model, trainer


def test_prior_stage_resume_matches_uninterrupted_run(results):
    prep = prepare(smoke_spec("shala-fused", results))
    data = prep.dataset_entry.loader(prep.protocol, None)
    straight, tr = _train(prep, data, results / "straight")
    assert tr.state.completed == ["vae", "prior"]

    with pytest.raises(Preempted):
        _train(prep, data, results / "split", stop_at_prior_step=2)
    ck = torch.load(results / "split" / "checkpoint.pt", weights_only=True)
    assert ck["state"]["stage"] == "prior" and ck["state"]["step"] == 2 and ck["state"]["completed"] == ["vae"]
    resumed, tr = _train(prep, data, results / "split", resume=True)
    assert tr.state.restarts == 1 and tr.state.completed == ["vae", "prior"]

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # stage 1 stayed frozen through the prior stage; the denoiser did train
    for k, v in ck["model"].items():
        assert torch.equal(v, a[k]) != k.startswith("denoiser."), k


def test_noprior_is_stage_one_and_generates_from_the_posterior_mean():
    M = 3
    model = get_registry().get_model("shala-noprior").build(spec_for(M), protocol(M)).eval()
    assert model.stages == ("vae",) and not hasattr(model, "denoiser")
    x = images(M)
    with torch.no_grad():
        out = model.generate({"m0": x["m0"]}, ["m1", "m2"])
        mean = model.decode(model.encode({"m0": x["m0"]}), ["m1", "m2"])
        assert set(out) == {"m1", "m2"} and all(torch.equal(out[m], mean[m]) for m in out)
        torch.manual_seed(5)
        s = model.sample(6)
        torch.manual_seed(5)
        ref = model.decode(torch.randn(6, model.protocol.latent_dim))
        assert all(torch.equal(s[m], ref[m]) for m in model.modalities)


def test_shala_fused_generates_from_the_diffusion_conditioned_on_its_fusion():
    M = 3
    model = get_registry().get_model("shala-fused").build(spec_for(M), protocol(M)).eval()
    assert model.stages == ("vae", "prior")
    x = images(M)
    with torch.no_grad():
        torch.manual_seed(1)
        out = model.generate({"m0": x["m0"], "m2": x["m2"]}, ["m1"])
        c, _, _ = model.fuse(*model.embed({"m0": x["m0"], "m2": x["m2"]}))
        torch.manual_seed(1)
        model.z_scale.fill_(2.0)  # the diffusion runs on s·z; decoders get z back on their own scale
        torch.manual_seed(1)
        out = model.generate({"m0": x["m0"], "m2": x["m2"]}, ["m1"])
        torch.manual_seed(1)
        z = model.diffusion.sample(model.denoiser, 4, c, model.config.sample_steps, model.config.guidance_scale) / 2.0
        assert torch.equal(out["m1"], model.decode(z, ["m1"])["m1"])
        assert set(model.sample(5)) == set(model.modalities)


@pytest.mark.parametrize("name", ["shala-fused", "shala-noprior"])
def test_smoke_run_writes_a_record(name, results):
    rec = run_one(smoke_spec(name, results))
    assert rec.ok, rec.status
    saved = json.loads((results / "polymnist-synth" / name / rec.run_id / "record.json").read_text())
    assert "coherence_joint" in saved["metrics"] and "coherence_cond_mean" in saved["metrics"]
    assert ("train_prior_s" in saved["timings"]) == (name == "shala-fused")


@pytest.mark.parametrize("bad", [{"ddim_eta": 1.5}, {"denoiser_width": 0}, {"cond_dropout": 1.0}])
def test_config_rejects_bad_shala_settings(bad):
    import re

    from shala_bench.errors import ProtocolError

    with pytest.raises(ProtocolError, match=re.escape(f"shala.{next(iter(bad))} must be")):
        config("shala", protocol(3), **bad)


def test_ablation_trains_the_same_stage_one(results):
    """Same seed and protocol: shala-noprior's weights are exactly shala-fused's stage 1, so the
    leaderboard's difference between the two is the diffusion prior and nothing else."""
    full = prepare(smoke_spec("shala-fused", results))
    data = full.dataset_entry.loader(full.protocol, None)
    shala, _ = _train(full, data, results / "full")
    noprior, _ = _train(prepare(smoke_spec("shala-noprior", results)), data, results / "noprior")
    a = shala.state_dict()
    for k, v in noprior.state_dict().items():
        assert torch.equal(v, a[k]), k
