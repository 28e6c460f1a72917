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
