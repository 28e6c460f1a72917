"""The harness's table of contents: every hook a plugin can implement.

Built-in models, datasets and metrics are registered through these same hooks, loaded
from the entry-point group ``shala_bench`` exactly as a third-party package's are.
A plugin is any module (or object) with functions of these names, marked ``@hookimpl``.
"""

import pluggy

PROJECT = "shala_bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------- models
@hookspec
def shala_bench_register_models():
    """Called once when the registry is built.

    Return a list of :class:`shala_bench.registry.ModelEntry` (name, factory, card).
    The factory takes ``(spec: DatasetSpec, protocol: Protocol)`` and returns a
    :class:`shala_bench.contract.MultimodalVAE`.
    """


# ---------------------------------------------------------------- datasets
@hookspec
def shala_bench_register_datasets():
    """Called once when the registry is built.

    Return a list of :class:`shala_bench.registry.DatasetEntry` (name, loader, profiles).
    The loader takes ``(protocol, cache_dir)`` and returns a :class:`LoadedDataset`.
    """


# ---------------------------------------------------------------- metrics
@hookspec
def shala_bench_register_metrics():
    """Called once when the registry is built.

    Return a list of :class:`shala_bench.registry.MetricEntry`. Each metric takes an
    :class:`shala_bench.evaluate.EvalContext` and returns a flat dict of numbers (or
    an ``{"unavailable": reason}`` entry) that goes into the run record. Its ``keys``
    (:class:`shala_bench.registry.MetricKey`) say, per key or fnmatch pattern, which way
    is better and what it means (the leaderboard reads nothing from names); its
    ``version`` goes into the record, and records of different versions are never
    ranked together.
    """


# ---------------------------------------------------------------- availability
@hookspec
def shala_bench_unavailable():
    """Called by ``shala-bench list``.

    Return one line saying what the plugin did not register and why (e.g. an optional dependency
    that is not installed, and how to install it), or None when it registered everything it offers.
    """
