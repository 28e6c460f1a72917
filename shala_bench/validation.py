"""Validation during training: the number a stage's early stopping maximises, on the VALIDATION split.

`Validator(data, protocol)(model, selection)` scores a model on the first `val_n` validation tuples
(capped at n_val) and returns

- ``val_loss``: the mean negative bound (``model.negative_bound``), always;
- ``val_coherence_cond_k1`` / ``val_coherence_cond_bal_k1``: the plain / balanced accuracy of the harness's
  judge classifiers (the cached ones evaluation uses, shala_bench.metrics.classifiers) on the modalities
  generated from each single given modality, mean over the generated modalities and the given one (the test
  metric ``coherence_cond_k1`` / ``coherence_cond_bal_k1`` of shala_bench.metrics.coherence, on validation
  tuples); only when the selection reads it;
- ``val_recon_bal``: when the stage selects on its loss (a stage that cannot generate yet, e.g. a
  two-stage model's stage 1) of a single-label dataset: the judges' balanced accuracy on the
  reconstructions decode(encode(X)) of all M modalities, mean over them. Not a selection metric: the
  trainer's guard (below) reads it;
- ``val_selection``: what early stopping maximises: the balanced k = 1 coherence when the stage selects on
  the dataset's metric ("dataset") and the dataset declares "coherence_cond_k1" (DatasetEntry.selection),
  else ``-val_loss`` (a stage's "loss" selection, a dataset's "bound" selection, or M = 1). The trainer breaks
  ties of the coherence (a finite set gives equal accuracies) by the bound.

Validation never touches the training RNG stream: it runs in a forked RNG seeded with a fixed seed (the same
weights always score the same), in eval mode and without gradients; the model's mode is restored after. So a
run with more evaluations trains exactly as one with fewer, and a resumed run as an uninterrupted one.
"""

from __future__ import annotations

import torch

from shala_bench.data.spec import LoadedDataset, Split, to_float
from shala_bench.protocol import Protocol

VAL_SEED_OFFSET = 20_000  # validation noise is seeded apart from training (+0) and evaluation (+10,000) noise
BATCH = 500
# A stage selected on coherence is not called converged, nor stopped on a plateau, while its best validation
# value is within this much of chance (1/C for balanced accuracy): a plateau at chance is a model that has not
# started to learn the shared content (the "average image" phase), not a result. 0.05 is ~6 standard errors of
# a balanced accuracy of 250 tuples x 5 sources at p = 0.1.
CHANCE_MARGIN = 0.05
# The same guard for a stage selected on its loss: its reconstructions must leave chance. A loss plateau can
# come before the decoders use the latent at all: shala-cond's joint stage 1 at M = 8 (seed 0) improved its
# validation loss by < 0.1 % per evaluation from 230k to 346k samples and stopped there, its reconstructions
# all judged one class (balanced accuracy 0.100) while a linear probe read the digit off its latent at 0.73.
RECON = "val_recon_bal"


def selection_metric(stage_selection: str, dataset_selection: str, n_modalities: int) -> str:
    """The val_* column early stopping reads for a stage: 'val_coherence_cond_bal_k1' or 'val_loss'."""
    if stage_selection == "dataset" and dataset_selection == "coherence_cond_k1" and n_modalities > 1:
        return "val_coherence_cond_bal_k1"
    return "val_loss"


class Validator:
    """Scores a model on the validation split (module docstring); holds the judge classifiers once loaded."""

    def __init__(self, data: LoadedDataset, protocol: Protocol, dataset_selection: str = "coherence_cond_k1",
                 device="cpu", cache_dir=None, seed: int = 0):
        self.data, self.protocol, self.dataset_selection = data, protocol, dataset_selection
        self.device, self.cache_dir, self.seed = torch.device(device), cache_dir, seed
        if data.spec.multilabel and dataset_selection == "coherence_cond_k1":
            self.dataset_selection = "bound"  # no accuracy on multi-label findings: a dataset should say "bound"
        n = min(protocol.val_n, protocol.n_val, len(data.splits["val"]) if "val" in data.splits else 0)
        self.val: Split | None = data.splits["val"].head(n).to(self.device) if n > 0 else None
        self._classifiers = None

    @property
    def enabled(self) -> bool:
        return self.val is not None

    def metric(self, stage_selection: str) -> str:
        return selection_metric(stage_selection, self.dataset_selection, len(self.data.spec.modalities))

    def floor(self, stage_selection: str) -> float | None:
        """The selection value a plateau must rise above to count (chance + CHANCE_MARGIN), or None (a bound)."""
        if self.metric(stage_selection) == "val_coherence_cond_bal_k1":
            return self._chance_floor()
        return None

    def _chance_floor(self) -> float:
        return 1.0 / self.data.spec.n_classes + CHANCE_MARGIN

    def content_floor(self, stage_selection: str) -> float | None:
        """For a stage selected on its loss: the reconstruction accuracy (RECON) its best weights must rise above
        for a plateau to count (chance + CHANCE_MARGIN), or None: a dataset that selects on its bound (or is
        multi-label; __init__ makes those "bound") has no judges to read the reconstructions."""
        if self.metric(stage_selection) == "val_loss" and self.dataset_selection == "coherence_cond_k1":
            return self._chance_floor()
        return None

    def classifiers(self) -> dict:
        """{modality: (classifier, test accuracy)}: trained once and cached (a forked RNG; see get_classifiers)."""
        if self._classifiers is None:
            from shala_bench.metrics.classifiers import get_classifiers

            self._classifiers = get_classifiers(self.data, self.protocol, self.device, self.cache_dir)
        return self._classifiers

    def __call__(self, model, stage_selection: str = "dataset") -> dict:
        if self.val is None:
            raise ValueError("no validation tuples (val_n or n_val is 0)")
        metric = self.metric(stage_selection)
        was_training = model.training
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            model.eval()
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(self.seed + VAL_SEED_OFFSET)
                out = {"val_loss": self._loss(model)}
                if metric != "val_loss":
                    out.update(self._coherence_k1(model))
                elif self.content_floor(stage_selection) is not None:
                    out[RECON] = self._reconstruction(model)
        finally:
            model.train(was_training)
        out["val_selection"] = out[metric] if metric != "val_loss" else -out["val_loss"]
        return out

    def _batches(self):
        val = self.val
        for i in range(0, len(val), BATCH):
            yield {m: to_float(v[i:i + BATCH]) for m, v in val.data.items()}, val.labels[i:i + BATCH]

    def _loss(self, model) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for x, _ in self._batches():
            total += model.negative_bound(x).double().sum()
        return float(total) / len(self.val)

    def _judged(self, produce, targets: list[str]) -> dict[str, torch.Tensor]:
        """The judges' predicted classes of the `targets` that produce(x) makes from each validation batch. {t: (N,)}"""
        from shala_bench.metrics.classifiers import classifier_input, predict

        spec, clfs = self.data.spec, self.classifiers()
        logits: dict[str, list] = {t: [] for t in targets}
        for x, _ in self._batches():
            out = produce(x)
            for t in targets:
                logits[t].append(predict(clfs[t][0], classifier_input(spec.modality(t), out[t])))
        return {t: torch.cat(v).argmax(1) for t, v in logits.items()}

    def _reconstruction(self, model) -> float:
        """The judges' balanced accuracy on decode(encode(X)) of all modalities, mean over the modalities."""
        from shala_bench.metrics.coherence import balanced_accuracy

        preds = self._judged(lambda x: model.decode(model.encode(x)), list(model.modalities))
        accs = [balanced_accuracy(q, self.val.labels, self.data.spec.n_classes) for q in preds.values()]
        return sum(accs) / len(accs)

    def _coherence_k1(self, model) -> dict:
        from shala_bench.metrics.coherence import balanced_accuracy

        labels, plain, balanced = self.val.labels, [], []
        for given in model.modalities:
            targets = [m for m in model.modalities if m != given]
            preds = self._judged(lambda x: model.generate({given: x[given]}, targets), targets)
            for q in preds.values():
                plain.append(float((q == labels).float().mean()))
                balanced.append(balanced_accuracy(q, labels, self.data.spec.n_classes))
        return {"val_coherence_cond_k1": sum(plain) / len(plain),
                "val_coherence_cond_bal_k1": sum(balanced) / len(balanced)}
