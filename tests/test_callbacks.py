"""Trainer callbacks: curves.csv, the order of calls across a resume, TensorBoard, and exact resume with
evaluations on."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest
import torch

from shala_bench.callbacks import CURVES, CURVES_PNG, CurvesCallback, TensorBoardCallback, require_tensorboard
from shala_bench.errors import ShalaBenchError
from shala_bench.trainer import CHECKPOINT, load_checkpoint
from toytrain import Callback, Recorder, bound_validator, toy_data, toy_protocol, train

STAGES = ("vae", "prior")


def test_curves_csv_has_a_row_per_log_step_and_per_evaluation(tmp_path):
    data = toy_data()
    p = toy_protocol()
    train(tmp_path, p, bound_validator(data, p), [CurvesCallback()], stages=STAGES, data=data)
    df = pd.read_csv(tmp_path / CURVES)
    assert list(df.columns) == ["stage", "step", "samples", "kind", "rec", "loss", "lr", "samples_per_s", "val_loss",
                                "val_selection"]
    train_rows, val_rows = df[df.kind == "train"], df[df.kind == "val"]
    assert len(train_rows) == 10 + 5 and len(val_rows) == 10 + 5  # log and eval every 2 steps; 20 + 10 steps
    assert train_rows.val_loss.isna().all() and val_rows.loss.isna().all()
    assert list(df.samples) == sorted(df.samples) and df.samples.iloc[-1] == 160 + 80  # cumulative over the run
    assert (val_rows.val_selection == -val_rows.val_loss).all()  # a "bound" dataset selects on minus the bound
    assert (train_rows.lr == 1e-3).all() and (train_rows.samples_per_s > 0).all()
    assert (tmp_path / CURVES_PNG).stat().st_size > 0


class Interrupt(KeyboardInterrupt):
    pass


class DieAtCheckpoint(Callback):
    def __init__(self, n):
        self.n = n

    def on_checkpoint(self, trainer):
        self.n -= 1
        if self.n == 0:
            raise Interrupt


@pytest.mark.parametrize("checkpoints", [2, 5])  # mid-stage 1; mid-stage 2 (after stage 1's end)
def test_an_interrupted_and_resumed_run_calls_back_in_the_same_order_and_ends_bit_identical(tmp_path, checkpoints):
    data = toy_data()
    p = toy_protocol(patience=3)

    def run(folder, *extra, resume=False):
        rec = Recorder()
        model, tr = train(folder, p, bound_validator(data, p), [rec, CurvesCallback(), *extra], stages=STAGES,
                          resume=resume, data=data)
        return model, tr, rec.events

    straight, tr_a, events_a = run(tmp_path / "a")
    rec_b = Recorder()
    with pytest.raises(Interrupt):
        train(tmp_path / "b", p, bound_validator(data, p), [rec_b, CurvesCallback(), DieAtCheckpoint(checkpoints)],
              stages=STAGES, data=data)
    assert rec_b.events[-1][0] == "checkpoint"
    resumed, tr_b, events_b = run(tmp_path / "b", resume=True)
    assert events_b[0][0] == "fit_start" and tr_b.state.restarts == 1
    assert rec_b.events + events_b[1:] == events_a
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert tr_a.state.summaries.keys() == tr_b.state.summaries.keys()
    for stage, s in tr_a.state.summaries.items():
        t = tr_b.state.summaries[stage]
        assert {k: v for k, v in s.items() if "seconds" not in k} == {k: v for k, v in t.items() if "seconds" not in k}
    a, b = (pd.read_csv(d / CURVES).drop(columns="samples_per_s") for d in (tmp_path / "a", tmp_path / "b"))
    pd.testing.assert_frame_equal(a, b)  # no row duplicated, none lost
    ck_a, ck_b = load_checkpoint(tmp_path / "a" / CHECKPOINT), load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert ck_a["state"]["early"] == ck_b["state"]["early"]


def test_tensorboard_missing_is_one_clear_line(monkeypatch, capsys):
    from shala_bench.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ShalaBenchError, match="tensorboard package is not installed"):
        require_tensorboard()
    assert main(["run", "--model", "mvae", "--profile", "smoke", "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install tensorboard" in err


def test_tensorboard_callback_writes_every_row_against_samples(tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir, self.purge_step = log_dir, purge_step

        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    data = toy_data()
    p = toy_protocol()
    train(tmp_path, p, bound_validator(data, p), [TensorBoardCallback()], data=data)
    tags = {t for t, _ in written}
    assert {"vae/loss", "vae/rec", "vae/lr", "vae/samples_per_s", "vae/val_loss", "vae/val_selection"} <= tags
    assert ("vae/loss", 16) in written and written[-1] == ("closed", None)
