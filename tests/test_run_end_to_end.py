import json
import math

import pytest
import torch

from conftest import smoke_spec
from shala_bench.launch import run_one
from shala_bench.results import load_records
from shala_bench.trainer import CHECKPOINT, load_checkpoint


def test_smoke_run_writes_a_complete_record(results):
    rec = run_one(smoke_spec("mvae", results))
    assert rec.ok
    path = results / "polymnist-synth" / "mvae" / rec.run_id / "record.json"
    on_disk = json.loads(path.read_text())
    for field in ("metrics", "timings", "n_params", "hardware", "git_commit", "versions", "protocol_hash", "status",
                  "protocol", "seed", "n_modalities"):
        assert field in on_disk
    assert on_disk["protocol_hash"] == rec.protocol_hash and len(rec.protocol_hash) == 64
    M = rec.n_modalities
    for k in range(1, M):
        assert 0.0 <= rec.metrics[f"coherence_cond_k{k}"] <= 1.0
    assert 0.0 <= rec.metrics["coherence_joint"] <= 1.0
    assert all(f"classifier_acc_m{i}" in rec.metrics for i in range(M))
    assert rec.timings["train_s"] > 0 and rec.timings["train_samples_per_s"] > 0
    assert [r.run_id for r in load_records(results)] == [rec.run_id]


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    overrides = {"steps": 8, "checkpoint_every": 3, "log_every": 1}
    straight = run_one(smoke_spec("mvae", tmp_path / "a", overrides=overrides))

    class Interrupt(KeyboardInterrupt):
        pass

    def stop_after_first_checkpoint(trainer):
        save = trainer.save

        def save_then_die():
            save()
            raise Interrupt

        trainer.save = save_then_die

    with pytest.raises(Interrupt):
        run_one(smoke_spec("mvae", tmp_path / "b", overrides=overrides), trainer_hook=stop_after_first_checkpoint)
    rid = straight.run_id
    partial = load_checkpoint(tmp_path / "b" / "polymnist-synth" / "mvae" / rid / CHECKPOINT)
    assert partial["state"]["step"] == 3 and not partial["state"]["completed"]
    resumed = run_one(smoke_spec("mvae", tmp_path / "b", overrides=overrides, resume=True))
    assert resumed.ok and resumed.restarts == 1
    a = load_checkpoint(tmp_path / "a" / "polymnist-synth" / "mvae" / rid / CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / "b" / "polymnist-synth" / "mvae" / rid / CHECKPOINT)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_ends_the_run_as_failed_with_the_step(results):
    # a learning rate this large blows the weights up within a few steps
    rec = run_one(smoke_spec("mvae", results, overrides={"lr": 1e30, "steps": 6, "log_every": 1}))
    assert rec.status.startswith("failed: nan at step ")
    step = int(rec.status.rsplit(" ", 1)[1])
    assert 0 <= step < 6
    on_disk = load_records(results)
    assert len(on_disk) == 1 and on_disk[0].status == rec.status


def test_a_requeue_before_the_first_checkpoint_still_counts_as_a_restart(tmp_path, monkeypatch):
    # SLURM requeued the job before it wrote a checkpoint: nothing is resumed, the record still says 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    rec = run_one(smoke_spec("mvae", tmp_path, overrides={"steps": 2}))
    assert rec.ok and rec.restarts == 1
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert run_one(smoke_spec("mvae", tmp_path / "b", overrides={"steps": 2})).restarts == 0
