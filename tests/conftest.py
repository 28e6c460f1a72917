"""Shared fixtures: an isolated cache and results folder per test session, seeded torch."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Datasets and classifiers are built once per session and shared by the tests in it.
    os.environ["SHALA_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def results(tmp_path):
    return tmp_path / "runs"


def smoke_spec(model: str, results, **kw):
    """A RunSpec for the smoke profile (seconds on a CPU), without progress bars."""
    from shala_bench.launch import RunSpec

    overrides = tuple(kw.pop("overrides", {}).items())
    return RunSpec(model=model, profile="smoke", results=str(results), progress=False, overrides=overrides, **kw)


def build_model(name: str, overrides: dict | None = None, config: dict | None = None, spec=None,
                dataset: str = "polymnist-synth", profile: str = "smoke"):
    """A model as a run builds it (protocol v2): the recipe from `overrides` (shared settings; `<dataset>.<key>`
    for the dataset's own), the model's own config resolved from `config` (its keys without the namespace).
    `spec` defaults to polymnist-synth's for the recipe's M."""
    from shala_bench.data.polymnist_synth import spec_for
    from shala_bench.protocol import make_protocol
    from shala_bench.registry import get_registry

    reg = get_registry()
    p = make_protocol(reg.get_dataset(dataset), profile, overrides or {})
    entry = reg.get_model(name)
    return entry.build(spec if spec is not None else spec_for(p.n_modalities), p, entry.resolve(p, config).config)
