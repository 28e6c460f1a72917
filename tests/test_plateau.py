"""Training to a measured plateau: early stopping, best weights, stage budgets from the model."""

from __future__ import annotations

import pytest
import torch

from shala_bench.contract import MultimodalVAE, StageBudget
from shala_bench.errors import ProtocolError
from shala_bench.results import RunRecord
from shala_bench.trainer import BEST, CHECKPOINT, load_checkpoint
from toytrain import Callback, Scripted, bound_validator, toy_data, toy_protocol, train


def test_early_stopping_stops_on_a_constructed_plateau_and_not_before(tmp_path):
    # eval every 2 steps; best at the 3rd evaluation (step 6), then 3 without improvement: stop at step 12
    scripted = Scripted([1, 2, 3, 3, 2.5, 3, 9, 9, 9, 9])
    _, tr = train(tmp_path / "a", toy_protocol(patience=3), scripted)
    s = tr.state.summaries["vae"]
    assert scripted.calls == 6 and tr.state.step == 12
    assert (s["stop_reason"], s["converged"], s["best_step"], s["evaluations"]) == ("plateau", True, 6, 6)
    assert s["samples"] == 12 * 8 and s["steps"] == 12
    # one improvement (beyond min_delta) inside the patience window resets it: no stop before the budget
    scripted = Scripted([1, 2, 3, 3, 3.5, 3, 3, 4, 4, 4])
    _, tr = train(tmp_path / "b", toy_protocol(patience=3), scripted)
    s = tr.state.summaries["vae"]
    assert scripted.calls == 10 and (s["stop_reason"], s["best_step"], s["converged"]) == ("budget", 16, False)
    # min_delta: a rise of 0.5 does not count when 1 is asked for
    scripted = Scripted([1, 2.5, 3, 3.4, 3.5, 9])
    _, tr = train(tmp_path / "c", toy_protocol(patience=3, min_delta=1.0), scripted)
    assert scripted.calls == 5 and tr.state.summaries["vae"]["best_step"] == 4


def test_a_loss_selected_stage_counts_a_fall_relative_to_its_best_loss_and_a_coherence_min_delta(tmp_path):
    class LossScripted(Scripted):  # as Validator for a stage selected on its loss: the value is -val_loss
        def metric(self, selection):
            return "val_loss"

    # losses 1000, 990 (-1 %), 985.1 (-0.49 %), then 984.7, 984.4, 984.2 (0.09 % below 985.1 at most): with
    # min_rel_delta 0.001 the best stays at the 3rd evaluation (step 6), three without a fall > 0.985: stop
    losses = [1000, 990, 985.1, 984.7, 984.4, 984.2, 984.1, 984.0, 983.9, 983.8]
    scripted = LossScripted([-v for v in losses])
    _, tr = train(tmp_path / "a", toy_protocol(patience=3, min_delta=0.5, min_rel_delta=0.001), scripted)
    s = tr.state.summaries["vae"]
    assert scripted.calls == 6 and (s["stop_reason"], s["converged"], s["best_step"]) == ("plateau", True, 6)
    # the same curve without min_rel_delta: any fall counts (min_delta is a coherence's, not read for a loss)
    scripted = LossScripted([-v for v in losses])
    _, tr = train(tmp_path / "b", toy_protocol(patience=3, min_delta=0.5), scripted)
    assert scripted.calls == 10 and tr.state.summaries["vae"]["stop_reason"] == "budget"
    # and a coherence selection reads min_delta, not min_rel_delta: rises of 0.3-0.45 over 2.5 do not count
    scripted = Scripted([1, 2.5, 2.8, 2.9, 2.95, 9])
    _, tr = train(tmp_path / "c", toy_protocol(patience=3, min_delta=0.5, min_rel_delta=0.001), scripted)
    assert scripted.calls == 5 and tr.state.summaries["vae"]["best_step"] == 4


def test_converged_is_false_when_the_budget_ends_while_still_improving_and_null_without_patience(tmp_path):
    _, tr = train(tmp_path / "a", toy_protocol(patience=3), Scripted(range(10)))
    s = tr.state.summaries["vae"]
    assert (s["stop_reason"], s["converged"], s["best_step"], s["evaluations"]) == ("budget", False, 20, 10)
    # the patience ran out at the budget's last evaluation: a plateau
    _, tr = train(tmp_path / "b", toy_protocol(patience=3), Scripted([0, 1, 2, 3, 4, 5, 6, 6, 6, 6]))
    s = tr.state.summaries["vae"]
    assert (s["stop_reason"], s["converged"], s["best_step"]) == ("plateau", True, 14)
    _, tr = train(tmp_path / "c", toy_protocol(patience=0), Scripted([5, 4, 3, 2, 1, 0, 0, 0, 0, 0]))
    s = tr.state.summaries["vae"]
    assert (s["stop_reason"], s["converged"], s["best_step"], s["evaluations"]) == ("budget", None, 2, 10)


def test_a_plateau_at_chance_neither_stops_a_stage_nor_counts_as_converged(tmp_path):
    class AtChance(Scripted):
        def floor(self, selection):  # as Validator.floor for a coherence selection: chance 0.1 + the margin
            return 0.15

    # flat at chance: trains to the budget, unconverged (without the floor it would stop after 4 evaluations)
    scripted = AtChance([0.1] * 10)
    _, tr = train(tmp_path / "a", toy_protocol(patience=3), scripted)
    s = tr.state.summaries["vae"]
    assert scripted.calls == 10 and (s["stop_reason"], s["converged"]) == ("budget", False)
    # once it has left chance, a plateau stops it as before
    scripted = AtChance([0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    _, tr = train(tmp_path / "b", toy_protocol(patience=3), scripted)
    s = tr.state.summaries["vae"]
    assert scripted.calls == 8 and (s["stop_reason"], s["converged"], s["best_step"]) == ("plateau", True, 10)


def test_a_loss_plateau_while_the_reconstructions_are_at_chance_neither_stops_a_stage_nor_converges(tmp_path):
    """The guard for a stage selected on its loss (shala-cond's stage 1 at M = 8 stopped in the average-image
    phase): the reconstruction accuracy of its BEST weights must leave chance before a plateau counts."""

    class LossWithRecon(Scripted):  # as Validator for a loss-selected stage: -val_loss and val_recon_bal
        def __init__(self, losses, recon):
            super().__init__([-v for v in losses])
            self.recon = list(recon)

        def metric(self, selection):
            return "val_loss"

        def content_floor(self, selection):
            return 0.15

        def __call__(self, model, selection):
            out = super().__call__(model, selection)
            return {**out, "val_recon_bal": self.recon[self.calls - 1]}

    flat = [1000, 999.9, 999.8, 999.7, 999.6, 999.5, 999.4, 999.3, 999.2, 999.1]  # < 0.1 % per evaluation
    # reconstructions at chance: trains to the budget, unconverged (without the guard: stops after 4)
    v = LossWithRecon(flat, [0.1] * 10)
    _, tr = train(tmp_path / "a", toy_protocol(patience=3, min_rel_delta=0.001), v)
    s = tr.state.summaries["vae"]
    assert v.calls == 10 and (s["stop_reason"], s["converged"]) == ("budget", False)
    # the current weights' reconstructions leaving chance do not count while the best weights' are at chance
    v = LossWithRecon(flat, [0.1] + [0.9] * 9)
    _, tr = train(tmp_path / "b", toy_protocol(patience=3, min_rel_delta=0.001), v)
    assert v.calls == 10 and tr.state.summaries["vae"]["converged"] is False
    # best weights above chance: the plateau stops it as before
    v = LossWithRecon(flat, [0.5] * 10)
    _, tr = train(tmp_path / "c", toy_protocol(patience=3, min_rel_delta=0.001), v)
    s = tr.state.summaries["vae"]
    assert v.calls == 4 and (s["stop_reason"], s["converged"], s["best_step"]) == ("plateau", True, 2)


def test_the_best_weights_are_restored_and_kept_in_best_pt(tmp_path):
    snapshots = {}

    class Snap(Callback):
        def on_eval(self, trainer, row):
            snapshots[row["step"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    model, tr = train(tmp_path, toy_protocol(patience=4), Scripted([1, 5, 2, 2, 2, 2, 2, 2, 2, 2]), [Snap()])
    assert tr.state.summaries["vae"]["best_step"] == 4 and tr.state.step == 12
    best = snapshots[4]
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k
    for name in (CHECKPOINT, BEST):  # both hold the finished stage with its best weights
        ck = load_checkpoint(tmp_path / name)
        assert ck["state"]["completed"] == ["vae"] and ck["seed"] == 0
        assert all(torch.equal(ck["model"][k], best[k]) for k in best)
    assert not torch.equal(snapshots[12]["enc.weight"], best["enc.weight"])  # it did train past the best


def test_the_next_stage_starts_from_the_best_weights_of_the_first(tmp_path):
    seen = {}

    class AtStageEnd(Callback):
        def on_stage_end(self, trainer, stage, summary):
            seen[stage] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    values = [1, 5, 2, 2, 2, 2, 2, 2, 2, 2] + [1, 2, 3, 4, 5]
    model, tr = train(tmp_path, toy_protocol(patience=0), Scripted(values), [AtStageEnd()], stages=("vae", "prior"))
    assert tr.state.completed == ["vae", "prior"] and tr.state.summaries["vae"]["best_step"] == 4
    assert torch.equal(model.enc.weight, seen["vae"]["enc.weight"])  # stage 2 never trains enc
    assert tr.state.summaries["prior"]["samples"] == 80 and tr.samples_seen == 160 + 80


def test_validation_does_not_perturb_the_training_rng(tmp_path, monkeypatch):
    data = toy_data()
    p = toy_protocol(eval_every=8)  # an evaluation every step
    real = bound_validator(data, p)

    class Increasing:  # the real validator's work (forked RNG), with a rising score so the last step is the best
        enabled = True

        def __init__(self):
            self.n = 0

        def metric(self, selection):
            return "val_loss"

        def __call__(self, model, selection):
            out = real(model, selection)
            self.n += 1
            return {**out, "val_selection": float(self.n)}

    with_val, tr = train(tmp_path / "a", p, Increasing(), data=data)
    assert tr.state.summaries["vae"]["evaluations"] == 20
    without, _ = train(tmp_path / "b", p, None, data=data)
    monkeypatch.setattr("shala_bench.trainer.Trainer._count_flops", lambda *a: 0.0)
    no_flops, _ = train(tmp_path / "c", p, None, data=data)
    for k, v in without.state_dict().items():
        assert torch.equal(v, with_val.state_dict()[k]), k
        assert torch.equal(v, no_flops.state_dict()[k]), k
    # and the same weights always score the same: validation noise is seeded on its own
    assert real(with_val, "loss") == real(with_val, "loss")


def test_a_validator_without_tuples_trains_to_the_budget_with_the_last_weights(tmp_path):
    data = toy_data(n_val=0)
    _, tr = train(tmp_path, toy_protocol(patience=2, n_val=0), bound_validator(data, toy_protocol(n_val=0)),
                  data=data)
    s = tr.state.summaries["vae"]
    assert (s["converged"], s["evaluations"], s["best_step"], s["selection"]) == (None, 0, 20, None)
    assert s["train_flops"] > 0 and s["train_flops"] == s["flops_per_step"] * 20


def test_stage_budgets_come_from_the_model():
    from shala_bench.data.polymnist_synth import spec_for
    from shala_bench.registry import get_registry
    from test_shala import protocol

    p = protocol(3, max_train_samples=640, lr=2e-3)
    reg = get_registry()
    for name in ("shala", "shala-cond", "shala-post"):
        entry = reg.get_model(name)
        model = entry.build(spec_for(3), p, entry.resolve(p, {"prior_max_samples": 320, "prior_lr": 5e-4}).config)
        assert model.stage_budget("vae") == StageBudget(640, 2e-3, "loss")  # no prior to generate with yet
        assert model.stage_budget("prior") == StageBudget(320, 5e-4, "dataset")
        inherited = entry.build(spec_for(3), p)  # the prior's cap and rate default to the recipe's
        assert inherited.stage_budget("prior") == StageBudget(640, 2e-3, "dataset")
    assert reg.get_model("shala-noprior").build(spec_for(3), p).stage_budget("vae") == StageBudget(640, 2e-3)
    mvae = reg.get_model("mvae").build(spec_for(3), p)
    assert mvae.stage_budget("vae") == StageBudget(640, 2e-3, "dataset")
    with pytest.raises(ProtocolError, match="declares no budget for its stage 'prior'"):
        MultimodalVAE.stage_budget(mvae, "prior")
    with pytest.raises(ValueError):
        StageBudget(1, 1e-3, "coherence")


def test_records_without_the_plateau_fields_still_load():
    old = dict(run_id="r", model="mvae", dataset="toy", seed=0, n_modalities=2, profile="quick",
               protocol_hash="0" * 64, protocol={"steps": 600}, status="ok", checkpoint="checkpoint.pt")
    rec = RunRecord.from_dict(old)
    assert (rec.converged, rec.train_samples, rec.best_step, rec.train_flops, rec.stages) == (None, 0, {}, 0.0, {})
    assert rec.checkpoint == "checkpoint.pt"


def test_the_dataset_declares_its_selection_metric():
    from shala_bench.registry import DatasetEntry, get_registry

    reg = get_registry()
    assert reg.get_dataset("polymnist-synth").selection == "coherence_cond_k1"
    assert reg.get_dataset("mimic-cxr").selection == "bound"  # multi-label findings
    with pytest.raises(ValueError, match="selection"):
        DatasetEntry("x", None, "", selection="fid")


def test_the_validator_judges_a_loss_selected_stages_reconstructions(tmp_path):
    """val_recon_bal: the judges' balanced accuracy on decode(encode(X)); the average image is judged one class."""
    from conftest import build_model
    from shala_bench.data.spec import to_float
    from shala_bench.metrics.classifiers import classifier_input, predict
    from shala_bench.metrics.coherence import balanced_accuracy
    from shala_bench.registry import get_registry
    from shala_bench.validation import RECON, Validator

    model = build_model("shala-cond", {"n_modalities": 2}).eval()
    p = model.protocol
    data = get_registry().get_dataset("polymnist-synth").loader(p)
    v = Validator(data, p, cache_dir=tmp_path)
    assert v.metric("loss") == "val_loss" and v.content_floor("loss") == pytest.approx(0.1 + 0.05)
    assert v.content_floor("dataset") is None and Validator(data, p, "bound").content_floor("loss") is None
    assert RECON not in v(model, "dataset")  # a coherence-selected stage is judged on its coherence

    val, clfs = v.val, v.classifiers()
    x = {m: to_float(val.data[m]) for m in model.modalities}
    model.decode = lambda z, modalities=None: {m: x[m] for m in model.modalities}  # perfect reconstructions
    want = sum(balanced_accuracy(predict(clfs[m][0], classifier_input(data.spec.modality(m), x[m])).argmax(1),
                                 val.labels, data.spec.n_classes) for m in model.modalities) / 2
    assert v(model, "loss")[RECON] == pytest.approx(want)
    mean = {m: x[m].mean(0, keepdim=True).expand_as(x[m]) for m in model.modalities}  # the average image
    model.decode = lambda z, modalities=None: mean
    assert v(model, "loss")[RECON] <= v.content_floor("loss")
