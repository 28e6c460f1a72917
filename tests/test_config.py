"""Protocol v2 identity: plugin-owned configs, namespaced overrides, recipe hash vs config hash."""

from __future__ import annotations

import importlib
import itertools
import json
import sys
from pathlib import Path

import pytest

from conftest import smoke_spec
from shala_bench.cli import main
from shala_bench.errors import ProtocolError
from shala_bench.launch import RunSpec, prepare, resolve, run_one
from shala_bench.protocol import PROTOCOL_VERSION, parse_overrides
from shala_bench.registry import Registry, get_registry
from shala_bench.results import RunRecord, inconsistency, load_records, write_record

FIXTURE = Path(__file__).parent / "fixtures" / "thirdparty_plugin"


def spec(model: str, **overrides) -> RunSpec:
    return RunSpec(model=model, profile="smoke", overrides=tuple(overrides.items()))


def test_recipe_hash_is_shared_by_every_model_and_config_hashes_differ():
    reg = get_registry()
    resolved = {name: resolve(spec(name), reg) for name in reg.models}
    recipes = {r[0].hash for r in resolved.values()}
    assert len(recipes) == 1  # one recipe: every model is ranked together
    configs = {name: r[3].config for name, r in resolved.items()}
    # shala is shala-cond with the guidance scale chosen on validation, nothing else
    assert configs["shala"].to_dict() == {**configs["shala-cond"].to_dict(), "guidance_scale": 3.0}
    # models with other settings have other config hashes; the same settings, the same hash (the run id has the
    # model's name besides: mopoe and multivae/mopoe, both {beta}, are told apart there)
    for a, b in itertools.combinations(configs.values(), 2):
        assert (a.hash == b.hash) == (a.to_dict() == b.to_dict())
    assert len({c.hash for c in configs.values()}) > 1


def test_a_model_override_changes_its_config_hash_not_the_recipe_hash():
    reg = get_registry()
    base, _, _, cfg = resolve(spec("mopoe"), reg)
    over, _, _, cfg2 = resolve(spec("mopoe", **parse_overrides(["mopoe.beta=2.5"])), reg)
    assert over.hash == base.hash and cfg2.config.hash != cfg.config.hash
    assert cfg2.config.beta == 2.5 and cfg2.sources["beta"] == "command line"
    shared, _, _, cfg3 = resolve(spec("mopoe", **parse_overrides(["beta=2.5"])), reg)
    assert shared.hash != base.hash  # a shared setting is part of the recipe: ranked apart
    assert cfg3.config.beta == 2.5 and cfg3.sources["beta"] == "recipe"  # inherited from the recipe


def test_per_profile_defaults_and_their_sources():
    reg = get_registry()
    _, _, _, smoke = resolve(spec("mmvae"), reg)
    assert smoke.config.K == 2 and smoke.sources["K"] == "profile"
    _, _, _, quick = resolve(RunSpec(model="mmvae", profile="quick"), reg)
    assert quick.config.K == 1 and quick.sources["K"] == "default"


def test_another_models_namespace_is_ignored_by_a_run_but_refused_by_the_run_command(results, capsys):
    reg = get_registry()
    a, _, _, cfg = resolve(spec("mvae", **{"mopoe.beta": "2.5"}), reg)  # a sweep passes it to every cell
    b, _, _, cfg0 = resolve(spec("mvae"), reg)
    assert (a.hash, cfg.config.hash) == (b.hash, cfg0.config.hash)
    assert main(["run", "--model", "mvae", "--profile", "smoke", "--set", "mopoe.beta=2.5", "--results",
                 str(results)]) == 2
    err = capsys.readouterr().err
    assert "'mopoe' is another model's or dataset's settings; this run takes settings of mvae, polymnist-synth" in err
    assert not results.exists()


@pytest.mark.parametrize("pairs, message", [
    (["mopoe.bta=2.5"], "unknown setting mopoe.bta (did you mean beta?)"),
    (["mopoe.beta=high"], "--set mopoe.beta=high: expected float"),
    (["mopoe.beta=-1"], "mopoe.beta must be >= 0, got -1.0"),
    (["mopoee.beta=1"], "'mopoee' is no registered model or dataset"),
    (["bta=1"], "unknown recipe setting"),
    (["iwae_k=4"], "it is the plugin's own setting mmvae.K"),
    (["shala.sample_steps=60"], "shala.sample_steps=60 must be <= diffusion_T=50"),
])
def test_bad_overrides_are_one_clear_line(pairs, message):
    model = pairs[0].split(".")[0] if pairs[0].split(".")[0] in get_registry().models else "mopoe"
    with pytest.raises(ProtocolError) as e:
        resolve(spec(model, **parse_overrides(pairs)), get_registry())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_command_prints_every_setting_and_where_it_came_from(capsys):
    assert main(["config", "--model", "shala-post", "--profile", "smoke", "--set", "shala-post.post_weight=0.1",
                 "--set", "beta=2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recipe"]["protocol_version"] == PROTOCOL_VERSION == 2
    assert out["config"]["post_weight"] == 0.1 and out["config_sources"]["post_weight"] == "command line"
    assert out["config"]["beta"] == 2.0 and out["config_sources"]["beta"] == "recipe"
    assert out["config_sources"]["diffusion_T"] == "profile" and out["config_sources"]["embed_dim"] == "default"
    assert out["recipe_sources"]["beta"] == "command line" and out["recipe_sources"]["n_train"] == "profile"
    assert "iwae_k" not in out["recipe"] and "shala_embed_dim" not in out["recipe"]  # plugin-owned now
    assert main(["config", "--model", "shala-post", "--profile", "smoke"]) == 0
    text = capsys.readouterr().out
    assert "recipe hash" in text and "config hash" in text and "post_weight" in text


def test_dataset_settings_are_namespaced_and_part_of_the_recipe():
    reg = get_registry()
    base = resolve(RunSpec(model="mvae", dataset="ntu120", profile="smoke"), reg)[0]
    assert base.dataset_settings == {"frames": 16, "split": "xsub"}
    other = resolve(RunSpec(model="mvae", dataset="ntu120", profile="smoke",
                            overrides=tuple(parse_overrides(["ntu120.split=xset"]).items())), reg)[0]
    assert other.dataset_settings["split"] == "xset" and other.hash != base.hash


def _toy_registry() -> Registry:
    sys.path.insert(0, str(FIXTURE))
    try:
        plugin = importlib.import_module("shala_toy_plugin")
    finally:
        sys.path.pop(0)
    reg = Registry()
    if "toy-meanfusion" not in reg.models:  # not installed into this environment: register it here
        reg = Registry(plugins=[plugin])
    return reg


def test_a_third_party_setting_end_to_end(results, monkeypatch, capsys):
    reg = _toy_registry()
    monkeypatch.setattr("shala_bench.registry.get_registry", lambda: reg)
    assert main(["config", "--model", "toy-meanfusion", "--profile", "smoke", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config"] == {"kl_weight": 0.5} and shown["config_sources"] == {"kl_weight": "profile"}
    default = prepare(smoke_spec("toy-meanfusion", results), reg)
    rec = run_one(smoke_spec("toy-meanfusion", results, overrides={"toy-meanfusion.kl_weight": "0.25"}), reg)
    assert rec.ok and rec.config == {"kl_weight": 0.25}
    assert rec.protocol_hash == default.protocol.hash  # the toy's own setting is not the recipe's
    assert rec.config_hash != default.config.hash and rec.run_id.endswith(rec.config_hash[:8])
    assert rec.run_id != default.dir.name
    with pytest.raises(ProtocolError, match=r"unknown setting toy-meanfusion.kl_wieght \(did you mean kl_weight\?\)"):
        prepare(smoke_spec("toy-meanfusion", results, overrides={"toy-meanfusion.kl_wieght": "1"}), reg)


def test_v1_records_still_load_and_are_their_own_family(tmp_path):
    v1 = {"dataset": "polymnist-synth", "profile": "quick", "protocol_version": 1, "iwae_k": 1, "steps": 2400}
    from shala_bench.results import protocol_digest

    old = RunRecord("seed0-M5-" + protocol_digest(v1)[:12], "mopoe", "polymnist-synth", 0, 5, "quick",
                    protocol_digest(v1), v1, "ok", {"coherence_cond_k1": 0.5})
    write_record(old, tmp_path / "polymnist-synth" / "mopoe" / old.run_id)
    (loaded,) = load_records(tmp_path)
    assert inconsistency(loaded) is None and loaded.config == {} and loaded.config_hash == ""
    new = resolve(RunSpec(model="mopoe", profile="quick"), get_registry())[0]
    assert new.hash != loaded.protocol_hash and new.protocol_version == 2  # never ranked with v2 records


def test_an_edited_config_makes_a_record_inconsistent(tmp_path):
    rec = RunRecord("r", "mopoe", "polymnist-synth", 0, 2, "smoke", "", {}, "ok", config={"beta": 1.0},
                    config_hash="0" * 64)
    from shala_bench.results import protocol_digest

    rec.protocol_hash = protocol_digest(rec.protocol)
    assert "config_hash" in inconsistency(rec)


def test_a_recipe_field_added_later_keeps_the_hash_of_records_made_before_it():
    # min_rel_delta came after protocol v2's first records: left out of the canonical form at its "as before"
    # value (0), so the committed M = 5 records keep their hash and family, and re-evaluating or reproducing
    # one of them trains and ranks under the recipe it was made under, not under the quick profile's 0.001
    from shala_bench.protocol import LATER_FIELDS, make_protocol, trained_fields

    ds = get_registry().get_dataset("polymnist-synth")
    old = json.loads((Path(__file__).parents[1] / "benchmarks/results/quick_m5/mvae/record.json").read_text())
    assert "min_rel_delta" not in old["protocol"] and LATER_FIELDS == {"min_rel_delta": 0.0}
    kept = trained_fields(old["protocol"])
    assert kept["min_rel_delta"] == 0.0 and kept["max_train_samples"] == 614_400
    again = make_protocol(ds, "quick", kept)
    assert again.to_dict() == old["protocol"] and again.hash == old["protocol_hash"]
    now = make_protocol(ds, "quick")  # the current quick recipe sets it: in the record, in the hash
    assert now.to_dict()["min_rel_delta"] == 0.001 and now.hash != old["protocol_hash"]
    assert make_protocol(ds, "quick", {**kept, "min_rel_delta": 0.001}).hash not in (old["protocol_hash"], now.hash)
