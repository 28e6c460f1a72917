"""The MultiVae adapter (plugins/multivae_adapter.py): MultiVae's models pass our contract when `multivae` is
installed; without it the adapter registers nothing and `shala-bench list` says why in one line."""

from __future__ import annotations

import importlib
import importlib.util
import json

import pytest

import test_contract_all_models as contract
from conftest import smoke_spec
from shala_bench.registry import Registry
from test_contract_all_models import smoke  # noqa: F401  (the contract checks' fixture)

adapter = importlib.import_module("shala_bench.plugins.multivae_adapter")
ADAPTED = [f"multivae/{name}" for name in adapter.MODELS]
REQUIRED = {"multivae/mvae", "multivae/mopoe", "multivae/mmvae", "multivae/mmvaeplus"}


def registry_with_adapter() -> Registry:
    """The installed plugins, plus the adapter where the install's entry points lack it (a venv whose
    shala-bench install predates it)."""
    reg = Registry()
    if not reg.pm.is_registered(adapter):
        reg.pm.register(adapter)
    return reg


@pytest.fixture(scope="module")
def reg():
    pytest.importorskip("multivae", reason="MultiVae is not installed (pip install -e \".[multivae]\")")
    return registry_with_adapter()


@pytest.fixture
def use(reg, monkeypatch):
    """Point the contract checks' `get_registry` at the registry that has the adapter's models."""
    monkeypatch.setattr(contract, "get_registry", lambda: reg)


# ---------------------------------------------------------------- without MultiVae
@pytest.fixture
def no_multivae(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] == "multivae" else real(name, *a, **k))


def test_without_multivae_the_adapter_registers_nothing_and_says_why(no_multivae):
    reg = registry_with_adapter()
    assert not [name for name in reg.models if name.startswith("multivae/")]
    lines = [why for plugin, why in reg.unavailable() if "multivae_adapter" in plugin]
    assert lines == ['multivae/* models not registered: multivae is not installed (pip install -e ".[multivae]")']


def test_list_prints_the_unavailability_line(no_multivae, monkeypatch, capsys):
    from shala_bench import cli, registry

    reg = registry_with_adapter()
    monkeypatch.setattr(registry, "get_registry", lambda: reg)
    assert cli.main(["list", "models"]) == 0
    out = capsys.readouterr().out
    hits = [line for line in out.splitlines() if "multivae" in line]
    assert len(hits) == 1 and hits[0].startswith("not available: ") and "multivae_adapter" in hits[0] and "[multivae]" in hits[0]


# ---------------------------------------------------------------- with MultiVae: our contract on its models
def test_every_adapted_model_is_registered(reg):
    assert REQUIRED <= set(reg.models) and set(ADAPTED) <= set(reg.models)
    assert not [line for plugin, line in reg.unavailable() if "multivae_adapter" in plugin]


@pytest.mark.parametrize("name", ADAPTED)
def test_adapted_model_honours_the_contract(name, smoke, use):  # noqa: F811
    contract.test_encode_works_for_every_nonempty_subset(name, smoke)
    contract.test_decode_sample_generate_shapes(name, smoke)
    contract.test_loss_is_finite_and_backpropagates_in_every_stage(name, smoke)
    contract.test_negative_bound_is_per_sample_and_finite(name, smoke)
    contract.test_built_model_carries_its_resolved_config(name, smoke)


def test_our_networks_and_recipe_reach_multivae(reg, smoke):  # noqa: F811
    from shala_bench.backbones import ImageDecoder, ImageEncoder

    p, spec, x = smoke
    model = reg.get_model("multivae/mopoe").build(spec, p)
    assert model.config.beta == p.beta  # inherited from the recipe
    assert all(isinstance(model.mv.encoders[m].net, ImageEncoder) for m in spec.names)
    assert all(isinstance(model.mv.decoders[m].net, ImageDecoder) for m in spec.names)
    assert model.mv.latent_dim == p.latent_dim
    assert model.mv.model_config.decoder_dist_params["m0"] == {"scale": p.likelihood_scale}
    model.train()
    model.encode(x)  # MultiVae's encode switches to eval; the adapter puts the flag back
    assert model.training and model.mv.training


def test_own_settings_reach_multivae(reg, smoke):  # noqa: F811
    p, spec, _ = smoke
    entry = reg.get_model("multivae/mvae")
    model = entry.build(spec, p, entry.resolve(p, {"beta": "2.5", "subsets": "2"}).config)
    assert (model.mv.beta, model.mv.k) == (2.5, 2)


def test_smoke_run_of_multivae_mopoe_writes_an_ok_record(reg, results):
    from shala_bench.launch import run_one

    rec = run_one(smoke_spec("multivae/mopoe", results), registry=reg)
    assert rec.ok, rec.status
    saved = json.loads((results / "polymnist-synth" / "multivae" / "mopoe" / rec.run_id / "record.json").read_text())
    assert saved["status"] == "ok" and saved["model"] == "multivae/mopoe"
    assert "coherence_joint" in saved["metrics"]
    # its test_nll is MultiVae's objective, named so: never ranked against our models' "elbo"
    assert saved["metrics"]["test_nll_bound"] == "multivae_mopoe_objective"
    # the "/" in the name nests the record a level deeper; the leaderboard still finds it, copies it with its
    # curves and ranks it as a row of its own
    from shala_bench.cli import main

    out = results.parent / "pages"
    assert main(["leaderboard", "--collect", str(results), "--results", str(out / "records"), "--out", str(out)]) == 0
    copied = out / "records" / "polymnist-synth" / "multivae" / "mopoe" / rec.run_id
    assert (copied / "record.json").exists() and (copied / "curves.csv").exists()
    rows = [line for line in (out / "polymnist-synth.md").read_text().splitlines() if line.startswith("| multivae/mopoe ")]
    assert rows, "no multivae/mopoe row on the page"
