"""A stage's linear learning-rate warm-up (StageBudget.lr_warmup_samples): the rate of every step in closed form,
the same rates after a resume, and a budget without one trains and keys its shared stage as before."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shala_bench.contract import StageBudget
from shala_bench.trainer import Callback, Preempted, Trainer
from toytrain import SPEC, Toy, stop_before, toy_data, toy_protocol


class Rates(Callback):
    def __init__(self):
        self.rows = []

    def on_log(self, trainer, row):
        self.rows.append((row["step"], row["lr"]))


class Warm(Toy):
    def __init__(self, protocol, warmup):
        super().__init__(SPEC, protocol)
        self.warmup = warmup

    def stage_budget(self, stage):
        return dataclasses.replace(super().stage_budget(stage), lr_warmup_samples=self.warmup)


def _train(run_dir, warmup, stop_at=None, resume=False):
    p = toy_protocol(log_every=1, lr=1e-2)  # batch 8, 20 steps
    torch.manual_seed(0)
    model = Warm(p, warmup)
    rates = Rates()
    trainer = Trainer(model, p, toy_data().splits["train"], run_dir, seed=0, progress=False, callbacks=[rates])
    if stop_at is not None:
        stop_before(trainer, model, stop_at)
    trainer.fit(resume=resume)
    return model, trainer, rates.rows


def test_lr_at_is_linear_to_the_warmup_and_constant_after():
    b = StageBudget(1000, 1e-3, lr_warmup_samples=400)
    assert [b.lr_at(s) for s in (100, 200, 400, 401, 1000)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert StageBudget(1000, 1e-3).lr_at(8) == 1e-3
    with pytest.raises(ValueError, match="lr_warmup_samples"):
        StageBudget(1000, 1e-3, lr_warmup_samples=-1)


def test_every_step_trains_at_the_warmup_rate(tmp_path):
    _, trainer, rows = _train(tmp_path / "r", warmup=48)  # 6 steps of 8 samples
    lr = 1e-2
    expected = [lr * min(1.0, 8 * k / 48) for k in range(1, 21)]
    assert [s for s, _ in rows] == list(range(1, 21))
    assert [r for _, r in rows] == pytest.approx(expected)
    assert trainer.state.summaries["vae"]["lr_warmup_samples"] == 48


def test_a_run_resumed_mid_warmup_trains_exactly_as_an_uninterrupted_one(tmp_path):
    straight, _, rows = _train(tmp_path / "a", warmup=64)
    with pytest.raises(Preempted):
        _train(tmp_path / "b", warmup=64, stop_at=4)
    resumed, _, rows_b = _train(tmp_path / "b", warmup=64, resume=True)
    assert all(torch.equal(x, y) for x, y in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert [s for s, _ in rows_b] == list(range(5, 21))  # stopped after step 4: the resumed segment logs from step 5
    assert [r for _, r in rows_b] == [dict(rows)[s] for s, _ in rows_b]


def test_no_warmup_keeps_the_constant_rate_and_the_shared_stage_key():
    b = StageBudget(640, 2e-3, "loss")
    assert b.share_fields() == {"max_samples": 640, "lr": 2e-3, "selection": "loss"}  # as keys were written before
    assert dataclasses.replace(b, lr_warmup_samples=64).share_fields()["lr_warmup_samples"] == 64


def test_mvae_takes_its_warmup_from_its_config():
    from shala_bench.data.polymnist_synth import spec_for
    from shala_bench.registry import get_registry
    from test_shala import protocol

    p = protocol(2, max_train_samples=640, lr=2e-3)
    entry = get_registry().get_model("mvae")
    model = entry.build(spec_for(2), p, entry.resolve(p, {"lr_warmup_samples": 256}).config)
    assert model.stage_budget("vae") == StageBudget(640, 2e-3, "dataset", lr_warmup_samples=256)
