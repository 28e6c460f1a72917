import json
import math

import pytest
import torch

from conftest import smoke_spec
from shala_bench.launch import run_one
from shala_bench.results import load_records
from shala_bench.sweep import progress_detail
from shala_bench.trainer import CHECKPOINT, PROGRESS, Callback, load_checkpoint, write_progress


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
    assert rec.metrics["coherence_cond_chance"] == pytest.approx(0.1)  # ten digits
    # trained to the smoke budget (patience 0: convergence not judged), evaluated from its best weights
    assert rec.checkpoint == "best.pt" and (path.parent / "best.pt").is_file() and (path.parent / "curves.csv").is_file()
    assert rec.train_samples == 192 and rec.converged is None and rec.train_flops > 0
    s = rec.stages["vae"]
    assert rec.best_step == {"vae": s["best_step"]} and s["best_step"] in (3, 6) and s["evaluations"] == 2
    assert (s["stop_reason"], s["selection"], s["samples"]) == ("budget", "val_coherence_cond_bal_k1", 192)
    assert on_disk["stages"]["vae"] == s and rec.timings["val_s"] >= 0


def test_a_run_reports_its_stage_and_step_while_it_trains_then_that_it_evaluates(tmp_path):
    seen = {}

    class Watch(Callback):
        def on_fit_end(self, trainer):
            seen["after_fit"] = json.loads((trainer.run_dir / PROGRESS).read_text())
            seen["detail"] = progress_detail(trainer.run_dir)

    rec = run_one(smoke_spec("mvae", tmp_path, overrides={"max_train_samples": 192, "log_every": 4}),
                  callbacks=[Watch()])
    after = seen["after_fit"]
    # the last write is at the last step (a log step whether or not 6 is a multiple of log_every)
    assert (after["stage"], after["step"], after["steps"], after["stages"]) == ("vae", 6, 6, 1)
    assert after["steps_per_s"] > 0 and math.isfinite(after["loss"])
    assert seen["detail"].startswith("vae 6/6, ") and "steps/s" in seen["detail"]
    run = tmp_path / "polymnist-synth" / "mvae" / rec.run_id
    assert progress_detail(run) == "done"  # "evaluating <metric> (i/n)" during evaluation, then done
    assert progress_detail(tmp_path / "nowhere") == ""


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    overrides = {"max_train_samples": 256, "checkpoint_every": 3, "log_every": 1}
    straight = run_one(smoke_spec("mvae", tmp_path / "a", overrides=overrides))

    class Interrupt(KeyboardInterrupt):
        pass

    class StopAfterFirstCheckpoint(Callback):
        def on_checkpoint(self, trainer):
            raise Interrupt

    with pytest.raises(Interrupt):
        run_one(smoke_spec("mvae", tmp_path / "b", overrides=overrides), callbacks=[StopAfterFirstCheckpoint()])
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
    rec = run_one(smoke_spec("mvae", results, overrides={"lr": 1e30, "max_train_samples": 192, "log_every": 1}))
    assert rec.status.startswith("failed: nan at step ")
    step = int(rec.status.rsplit(" ", 1)[1])
    assert 0 <= step < 6
    on_disk = load_records(results)
    assert len(on_disk) == 1 and on_disk[0].status == rec.status


def test_a_requeue_before_the_first_checkpoint_still_counts_as_a_restart(tmp_path, monkeypatch):
    # SLURM requeued the job before it wrote a checkpoint: nothing is resumed, the record still says 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    rec = run_one(smoke_spec("mvae", tmp_path, overrides={"max_train_samples": 64}))
    assert rec.ok and rec.restarts == 1
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert run_one(smoke_spec("mvae", tmp_path / "b", overrides={"max_train_samples": 64})).restarts == 0


def test_progress_of_a_two_stage_model_names_the_stage_and_the_time_left(tmp_path):
    write_progress(tmp_path, stage="prior", stage_index=2, stages=2, step=300, steps=1500, loss=0.1, steps_per_s=10.0)
    assert progress_detail(tmp_path) == "prior 300/1500 (stage 2 of 2), 10.0 steps/s, ~2 min left in it"
    (tmp_path / PROGRESS).write_text("{not json")
    assert progress_detail(tmp_path) == ""
