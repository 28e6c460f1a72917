"""A tiny two-modality model and data for trainer tests: milliseconds per step, noise from torch's RNG."""

from __future__ import annotations

import torch
from torch import nn

from shala_bench.contract import MultimodalVAE, StageBudget
from shala_bench.data.spec import DatasetSpec, LoadedDataset, ModalitySpec, Split
from shala_bench.protocol import Protocol
from shala_bench.trainer import Callback, Trainer
from shala_bench.validation import Validator

SPEC = DatasetSpec("toy", (ModalitySpec("a", "skeleton", (4,), "gaussian"),
                           ModalitySpec("b", "skeleton", (4,), "gaussian")), 2)


class Toy(MultimodalVAE):
    """A linear autoencoder over both modalities with a noisy latent (so training draws from the RNG)."""

    def __init__(self, spec=SPEC, protocol=None, stages=("vae",), prior_max_samples=80, prior_lr=1e-3):
        super().__init__(spec, protocol)
        self.prior_budget = StageBudget(prior_max_samples, prior_lr)  # a model's own setting, as in its config
        self.stages = stages
        self.enc, self.dec = nn.Linear(8, 2), nn.Linear(2, 8)
        self.head = nn.Linear(2, 8)  # the "prior" stage's network

    def _rec(self, batch, net):
        x = torch.cat([batch["a"], batch["b"]], 1)
        z = self.enc(x) + 0.1 * torch.randn(x.shape[0], 2)
        return (net(z) - x).pow(2).sum(1)

    def loss(self, batch, stage="vae"):
        rec = self._rec(batch, self.dec if stage == "vae" else self.head).mean()
        return rec, {"rec": rec.detach()}

    def negative_bound(self, batch):
        return self._rec(batch, self.dec)

    def stage_parameters(self, stage):
        return list(self.head.parameters()) if stage == "prior" else list(self.enc.parameters()) + list(self.dec.parameters())

    def stage_budget(self, stage):
        return self.prior_budget if stage == "prior" else super().stage_budget(stage)


def toy_protocol(**kw) -> Protocol:
    base = dict(dataset="toy", profile="smoke", n_train=64, n_val=16, batch_size=8, max_train_samples=160,
                eval_every=16, checkpoint_every=5, log_every=2, patience=0, val_n=16)
    return Protocol(**{**base, **kw})


def toy_data(n: int = 64, n_val: int = 16) -> LoadedDataset:
    g = torch.Generator().manual_seed(7)

    def split(k):
        return Split({"a": torch.randn(k, 4, generator=g), "b": torch.randn(k, 4, generator=g)},
                     torch.randint(0, 2, (k,), generator=g))

    return LoadedDataset(SPEC, {"train": split(n), "val": split(n_val), "test": split(n_val)})


def bound_validator(data, protocol) -> Validator:
    return Validator(data, protocol, "bound")


class Scripted:
    """A validator whose selection values are scripted per evaluation (val_loss 0: no tie-break)."""

    enabled = True

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def metric(self, selection):
        return "val_scripted"

    def __call__(self, model, selection):
        v = self.values[self.calls]
        self.calls += 1
        return {"val_loss": 0.0, "val_selection": float(v)}


class Recorder(Callback):
    """Every callback as (hook, stage, step)."""

    def __init__(self):
        self.events = []

    def _add(self, hook, trainer, stage=None):
        self.events.append((hook, stage if stage is not None else trainer.state.stage, trainer.state.step))

    def on_fit_start(self, trainer):
        self._add("fit_start", trainer)

    def on_log(self, trainer, row):
        self._add("log", trainer, row["stage"])

    def on_eval(self, trainer, row):
        self._add("eval", trainer, row["stage"])

    def on_checkpoint(self, trainer):
        self._add("checkpoint", trainer)

    def on_stage_end(self, trainer, stage, summary):
        self._add("stage_end", trainer, stage)

    def on_fit_end(self, trainer):
        self._add("fit_end", trainer)


def train(run_dir, protocol=None, validator=None, callbacks=(), stages=("vae",), resume=False, data=None,
          seed=0) -> tuple[Toy, Trainer]:
    protocol = protocol or toy_protocol()
    data = data or toy_data()
    torch.manual_seed(seed)
    model = Toy(SPEC, protocol, stages)
    trainer = Trainer(model, protocol, data.splits["train"], run_dir, seed=seed, progress=False,
                      callbacks=callbacks, validator=validator)
    trainer.fit(resume=resume)
    return model, trainer


def stop_before(trainer: Trainer, model, step: int, stage: str | None = None) -> None:
    """A preemption signal arriving while `stage` (default: any) trains its step `step` (1-based): the trainer
    checkpoints at the end of that step and raises Preempted."""
    loss = model.loss

    def interrupting_loss(batch, s="vae"):
        if (stage is None or s == stage) and trainer.state.step == step - 1:
            trainer.stop_requested = True
        return loss(batch, s)

    model.loss = interrupting_loss
