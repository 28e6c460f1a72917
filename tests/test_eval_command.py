import hashlib
import json

import pytest
import torch

from conftest import copy_runs, smoke_spec
from shala_bench import trainer
from shala_bench.cli import main
from shala_bench.launch import run_one
from shala_bench.results import read_record


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def finished(mvae_smoke, results):
    """A finished mvae smoke run (seed 0): a fresh copy per test of the session's shared run."""
    copy_runs(mvae_smoke(0)[0], results, seeds=(0,))
    (path,) = results.rglob("record.json")
    rec = read_record(path)
    assert rec.ok and path.parent == results / "polymnist-synth" / "mvae" / rec.run_id
    return rec, path.parent


@pytest.fixture
def no_training(monkeypatch):
    def refuse(self, *a, **kw):
        raise AssertionError("eval must not train")

    monkeypatch.setattr(trainer.Trainer, "fit", refuse)


def test_eval_writes_a_new_record_for_the_same_checkpoint_without_retraining(finished, no_training, capsys):
    rec, folder = finished
    ck = folder / "best.pt"  # the evaluated checkpoint
    before = sha(ck)
    assert main(["eval", str(folder), "--set", "fd_n=32", "--set", "probe_n=64"]) == 0
    out = capsys.readouterr().out
    new_path = next(p for p in (folder.parent).glob("*/record.json") if p.parent != folder)
    assert str(new_path) in out
    new = read_record(new_path)
    assert new.ok and new.protocol["fd_n"] == 32 and new.protocol["probe_n"] == 64
    assert new.protocol_hash != rec.protocol_hash and new.run_id == f"seed0-M3-{new.protocol_hash[:12]}-{rec.config_hash[:8]}"
    assert (new.config, new.config_hash) == (rec.config, rec.config_hash)  # the model's own settings are the run's
    assert (new_path.parent / new.checkpoint).resolve() == ck.resolve() and sha(ck) == before
    assert (new_path.parent / new.artifacts["source_record"]).resolve() == (folder / "record.json").resolve()
    assert (new_path.parent / new.artifacts["samples_joint"]).is_file()
    # same weights and seeded evaluation: what the new settings do not touch is unchanged
    assert new.metrics["test_nll"] == pytest.approx(rec.metrics["test_nll"])
    assert new.metrics["coherence_cond_mean"] == pytest.approx(rec.metrics["coherence_cond_mean"])
    assert new.metrics["fd_n"] == 32 and new.metrics["probe_n_train"] == 64
    assert new.timings["train_s"] == rec.timings["train_s"] and new.timings["eval_s"] > 0
    t = new.timings
    assert t["eval_fraction_of_train"] == pytest.approx(t["eval_s"] / t["train_s"], rel=1e-2)
    assert read_record(folder / "record.json").protocol_hash == rec.protocol_hash  # the original is untouched
    # a re-evaluated record can itself be re-evaluated: its checkpoint is traced back to the training run
    assert main(["eval", str(new_path), "--set", "fd_n=16"]) == 0
    again = read_record(next(p for p in folder.parent.glob("*/record.json") if '"fd_n": 16' in p.read_text()))
    assert (folder.parent / again.run_id / again.checkpoint).resolve() == ck.resolve()


def test_eval_under_the_same_protocol_replaces_the_record_and_keeps_the_previous(finished, no_training):
    rec, folder = finished
    old = (folder / "record.json").read_text()
    assert main(["eval", str(folder / "record.json")]) == 0
    assert (folder / "record.previous.json").read_text() == old
    new = read_record(folder / "record.json")
    assert new.protocol_hash == rec.protocol_hash and new.checkpoint == "best.pt"
    assert new.artifacts["source_record"] == "record.previous.json"
    assert new.created >= rec.created
    # once more: the re-evaluation is replaced, the training run's record stays
    assert main(["eval", str(folder)]) == 0
    assert (folder / "record.previous.json").read_text() == old
    assert read_record(folder / "record.json").artifacts["source_record"] == "record.previous.json"


def test_eval_refuses_to_change_training_settings(finished, capsys):
    _, folder = finished
    assert main(["eval", str(folder), "--set", "latent_dim=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "latent_dim" in err and "evaluation settings" in err


def test_eval_refuses_to_change_the_models_trained_settings_and_other_models_settings(finished, capsys):
    _, folder = finished
    assert main(["eval", str(folder), "--set", "mvae.subsets=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mvae.subsets" in err and "evaluation settings" in err
    assert main(["eval", str(folder), "--set", "shala.guidance_scale=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'shala' is another model's or dataset's settings" in err


def test_eval_changes_a_models_own_evaluation_setting_without_retraining(results, request):
    rec = run_one(smoke_spec("shala-post", results))
    assert rec.ok and rec.config["post_weight"] == 1.0
    request.getfixturevalue("no_training")  # from here on
    folder = results / "polymnist-synth" / "shala-post" / rec.run_id
    assert main(["eval", str(folder), "--set", "shala-post.post_weight=0.1"]) == 0
    (new_path,) = [p for p in folder.parent.glob("*/record.json") if p.parent != folder]
    new = read_record(new_path)
    assert new.ok and new.config == {**rec.config, "post_weight": 0.1} and new.protocol_hash == rec.protocol_hash
    assert new.config_hash != rec.config_hash and new.run_id == f"seed0-M3-{rec.protocol_hash[:12]}-{new.config_hash[:8]}"
    assert (new_path.parent / new.checkpoint).resolve() == (folder / rec.checkpoint).resolve()  # the best.pt it trained


def test_eval_of_a_folder_without_a_record_is_one_line_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no run record" in err


def test_eval_of_an_unfinished_checkpoint_is_refused(finished, capsys):
    rec, folder = finished
    blob = json.loads((folder / "record.json").read_text())
    ck = torch.load(folder / "best.pt", weights_only=True)
    ck["state"]["completed"] = []
    torch.save(ck, folder / "best.pt")
    assert main(["eval", str(folder)]) == 2
    assert "has not finished" in capsys.readouterr().err
    assert json.loads((folder / "record.json").read_text()) == blob  # no partial record
