"""Shared fixtures: an isolated cache and results folder per test session, seeded torch."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    # one SLURM test cluster: its tests run one after another in one xdist worker, never beside each other
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    # under pytest-xdist every worker is a process of its own: one torch thread each, so two workers on two
    # cores do not each start two threads (the tests that time or pass --threads set their own)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    yield


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


class SmokeRuns:
    """`shala-bench run --model mvae --profile smoke --seed S --no-progress --threads 1`, each seed trained once per
    session, on first use, into one results folder. Tests that change runs work on a copy (`copy_runs`)."""

    def __init__(self, root):
        self.root, self.stdout = root, {}

    def __call__(self, *seeds: int):
        """The shared results folder once `seeds` have run, and each one's stdout."""
        import contextlib
        import io

        from shala_bench.cli import main

        for seed in seeds:
            if seed not in self.stdout:
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = main(["run", "--model", "mvae", "--profile", "smoke", "--seed", str(seed), "--results",
                                 str(self.root), "--no-progress", "--threads", "1"])
                assert code == 0, err.getvalue()
                self.stdout[seed] = out.getvalue()
        return self.root, [self.stdout[s] for s in seeds]


@pytest.fixture(scope="session")
def mvae_smoke(tmp_path_factory):
    return SmokeRuns(tmp_path_factory.mktemp("mvae-smoke") / "runs")


def copy_runs(src, dst, seeds=(0, 1)):
    """Copy the run folders of `seeds` under results folder `src` into results folder `dst` (same layout)."""
    import shutil

    for rec in src.rglob("record.json"):
        run = rec.parent
        if any(run.name.startswith(f"seed{s}-") for s in seeds):
            shutil.copytree(run, dst / run.relative_to(src))
    return dst
