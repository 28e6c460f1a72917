"""Coherence on fake models and classifiers whose answers are known, so every score has a closed form.

Images are 1x2x2 and say their class by their brightness, (c + 0.5) / C; the fake classifier reads it
back. A model is a rule from the given modalities' classes to the generated ones.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from shala_bench.data.spec import DatasetSpec, LoadedDataset, ModalitySpec, Split
from shala_bench.evaluate import EvalContext
from shala_bench.metrics.coherence import chance_corrected_agreement, conditional_coherence, joint_coherence

C, M = 10, 3
MODS = [f"m{i}" for i in range(M)]


def encode(classes: torch.Tensor) -> torch.Tensor:
    """Classes (N,) -> float images (N, 1, 2, 2) of brightness (c + 0.5) / C."""
    return ((classes.float() + 0.5) / C).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def decode(x: torch.Tensor) -> torch.Tensor:
    return (x.flatten(1).mean(1) * C - 0.5).round().long().clamp(0, C - 1)


class BrightnessClassifier(torch.nn.Module):
    def forward(self, x):
        centers = (torch.arange(C).float() + 0.5) / C
        return -((x.flatten(1).mean(1, keepdim=True) - centers) ** 2) * 1e4  # (B, C)


class Fake:
    """cond(given classes (N,), target index) -> generated classes; joint(n) -> (M, n) classes."""

    def __init__(self, cond, joint):
        self.modalities, self.cond, self.joint = MODS, cond, joint

    def generate(self, x_subset, targets):
        given = decode(next(iter(x_subset.values())))  # every test tuple's modalities share its label
        return {t: encode(self.cond(given, MODS.index(t))) for t in targets}

    def sample(self, n):
        classes = self.joint(n)
        return {m: encode(classes[i]) for i, m in enumerate(MODS)}


def labels(n: int) -> torch.Tensor:
    """Imbalanced test labels: class 0 twice as frequent as each other class."""
    weights = [2] + [1] * (C - 1)
    cycle = torch.cat([torch.full((w,), c) for c, w in enumerate(weights)])
    return cycle.repeat(n // len(cycle) + 1)[:n]


def ctx_for(model: Fake, n_test: int = 1100, joint_n: int = 1000) -> EvalContext:
    y = labels(n_test)
    img = (encode(y) * 255).round().to(torch.uint8)
    spec = DatasetSpec("fake", tuple(ModalitySpec(m, "image", (1, 2, 2)) for m in MODS), C)
    data = LoadedDataset(spec, {"test": Split({m: img for m in MODS}, y)})
    p = SimpleNamespace(eval_n=n_test, joint_n=joint_n, max_subsets_per_k=10, data_seed=0)
    ctx = EvalContext(model, p, data, torch.device("cpu"), None, 0)
    ctx.__dict__["classifiers"] = {m: (BrightnessClassifier(), 1.0) for m in MODS}  # instead of trained ones
    return ctx


def cycle(n: int) -> torch.Tensor:
    return torch.arange(n) % C


PERFECT = Fake(lambda y, t: y, lambda n: cycle(n).expand(M, n))
CONSTANT = Fake(lambda y, t: torch.zeros_like(y), lambda n: torch.zeros(M, n, dtype=torch.long))


def _random_joint(n):
    return torch.randint(0, C, (M, n), generator=torch.Generator().manual_seed(1))


RANDOM = Fake(lambda y, t: torch.randint(0, C, y.shape, generator=torch.Generator().manual_seed(10 + t)),
              _random_joint)


def scores(model: Fake, **kw) -> dict:
    ctx = ctx_for(model, **kw)
    return {**conditional_coherence(ctx), **joint_coherence(ctx)}


def test_a_perfect_model_scores_one_everywhere():
    s = scores(PERFECT)
    for k in ("coherence_cond_k1", "coherence_cond_k2", "coherence_cond_kmax", "coherence_cond_mean",
              "coherence_cond_bal_k1", "coherence_cond_bal_k2", "coherence_cond_bal_kmax", "coherence_cond_bal_mean",
              "coherence_joint", "coherence_joint_kappa"):
        assert s[k] == pytest.approx(1.0, abs=1e-6), k  # torchmetrics works in float32
    assert s["coherence_joint_chance"] == pytest.approx(C ** (1 - M))  # uniform classes: sum_c (1/C)^M
    assert s["coherence_joint_majority"] == pytest.approx(1 / C)
    assert s["coherence_cond_chance"] == pytest.approx(1 / C)


def test_a_constant_model_scores_one_over_c_balanced_and_kappa_zero():
    s = scores(CONSTANT)
    n0 = int((labels(1100) == 0).sum())
    for k in ("coherence_cond_bal_k1", "coherence_cond_bal_k2", "coherence_cond_bal_kmax", "coherence_cond_bal_mean"):
        assert s[k] == pytest.approx(1 / C, abs=1e-7), k
    # plain accuracy rewards the frequent class: 200 / 1100 > 1/C (the 0.105 against 0.1)
    assert s["coherence_cond_k1"] == pytest.approx(n0 / 1100) and s["coherence_cond_k1"] > 1 / C
    # raw agreement rewards the collapse; kappa does not, and the majority share gives it away
    assert s["coherence_joint"] == 1.0 and s["coherence_joint_chance"] == 1.0
    assert s["coherence_joint_kappa"] == 0.0 and s["coherence_joint_majority"] == 1.0


def test_a_random_model_scores_chance_within_tolerance():
    # 1100 test tuples x 6 (subset, target) pairs; 1000 joint samples. Standard errors: balanced
    # accuracy about 0.003, kappa about 0.003, raw agreement (chance 1/C^(M-1) = 0.01) about 0.003;
    # the tolerances are 5 of them or more.
    s = scores(RANDOM)
    assert s["coherence_cond_bal_mean"] == pytest.approx(1 / C, abs=0.02)
    assert s["coherence_cond_bal_k1"] == pytest.approx(1 / C, abs=0.02)
    assert s["coherence_cond_mean"] == pytest.approx(1 / C, abs=0.02)
    assert s["coherence_joint_kappa"] == pytest.approx(0.0, abs=0.02)
    assert s["coherence_joint"] == pytest.approx(1 / C ** (M - 1), abs=0.015)
    assert s["coherence_joint_chance"] == pytest.approx(1 / C ** (M - 1), abs=0.002)


def _one_class_joint(n):
    """Class 0: every modality shows 0. Class c > 0: modality m shows 1 + (c - 1 + m) mod (C - 1), so
    the modalities disagree and each still shows every class equally often."""
    c = cycle(n)
    shifted = torch.stack([1 + (c - 1 + m) % (C - 1) for m in range(M)])
    return torch.where(c == 0, torch.zeros_like(shifted), shifted)


# Right on class 0 only: other classes come out as another non-zero class.
ONE_CLASS = Fake(lambda y, t: torch.where(y == 0, y, 1 + y % (C - 1)), _one_class_joint)


def test_a_model_coherent_for_one_class_only_scores_the_closed_form():
    s = scores(ONE_CLASS)
    n0 = int((labels(1100) == 0).sum())
    # recall 1 on class 0 and 0 on the others: balanced 1/C, plain the frequency of class 0
    assert s["coherence_cond_bal_mean"] == pytest.approx(1 / C, abs=1e-7)
    assert s["coherence_cond_mean"] == pytest.approx(n0 / 1100)
    # joint: p_o = 1/C (the class-0 samples); every modality uniform, so p_e = C * C^-M
    p_o, p_e = 1 / C, C ** (1 - M)
    assert s["coherence_joint"] == pytest.approx(p_o)
    assert s["coherence_joint_chance"] == pytest.approx(p_e)
    assert s["coherence_joint_kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))  # 0.0909 at C = 10, M = 3
    assert s["coherence_joint_majority"] == pytest.approx(1 / C)


def test_kappa_of_independent_modalities_with_skewed_frequencies_is_zero_in_expectation():
    # modality 0 always says 0, modality 1 says 0 half the time: p_o = p_e = 0.5 exactly
    preds = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1]])
    a = chance_corrected_agreement(preds, 2)
    assert a == {"agreement": 0.5, "chance": 0.5, "kappa": 0.0, "majority": 1.0}


def test_multilabel_joint_kappa_is_per_finding_and_zero_for_a_collapsed_model():
    spec = DatasetSpec("x", tuple(ModalitySpec(m, "skeleton", (2,), "gaussian") for m in ("a", "b")), 2,
                       multilabel=True)
    ident = torch.nn.Identity()

    def ctx(out):
        return SimpleNamespace(model=SimpleNamespace(modalities=["a", "b"], sample=lambda n: out),
                               protocol=SimpleNamespace(joint_n=4), data=SimpleNamespace(spec=spec),
                               classifiers={"a": (ident, 1.0), "b": (ident, 1.0)})

    collapsed = {m: torch.ones(4, 2) for m in ("a", "b")}  # every finding positive everywhere
    res = joint_coherence(ctx(collapsed))
    assert res["coherence_joint"] == 1.0 and res["coherence_joint_kappa"] == 0.0
    # finding 0 agrees on every sample with balanced decisions (kappa 1); finding 1 is independent (kappa 0)
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    res = joint_coherence(ctx({"a": a, "b": b}))
    assert res["coherence_joint_kappa"] == pytest.approx(0.5)
    assert res["coherence_joint"] == pytest.approx((1.0 + 0.5) / 2)
