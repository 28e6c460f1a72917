"""Test helpers for metric plugins: an EvalContext over smoke-profile polymnist-synth (M = 3).

`oracle=True` gives a model whose samples and generations are the real test tuples, in
order, so any distance between generated and real test features must be 0.
"""

from __future__ import annotations

import pytest
import torch

from shala_bench.baselines.mvae import MVAE
from shala_bench.data.spec import to_float
from shala_bench.evaluate import EvalContext
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry


class Oracle(MVAE):
    """MVAE whose sample(n) and generate() return the first test tuples (as floats in [0, 1])."""

    def __init__(self, spec, protocol, config, test):
        super().__init__(spec, protocol, config)
        self.test = test

    def sample(self, n):
        return {m: to_float(v[:n]) for m, v in self.test.data.items()}

    def generate(self, x_subset, targets):
        n = len(next(iter(x_subset.values())))
        return {t: to_float(self.test.data[t][:n]) for t in targets}


@pytest.fixture
def smoke_ctx(tmp_path):
    def make(oracle: bool = False, options: dict | None = None, **overrides) -> EvalContext:
        entry = get_registry().get_dataset("polymnist-synth")
        p = make_protocol(entry, "smoke", overrides)
        data = entry.loader(p, None)
        cfg = get_registry().get_model("mvae").resolve(p).config  # MVAE's own settings, resolved under p
        torch.manual_seed(0)
        model = Oracle(data.spec, p, cfg, data.splits["test"]) if oracle else MVAE(data.spec, p, cfg)
        return EvalContext(model.eval(), p, data, torch.device("cpu"), tmp_path / "run", 0, options=options or {})

    return make
