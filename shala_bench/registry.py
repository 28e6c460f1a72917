"""One registry object: a pluggy plugin manager over the ``shala_bench`` entry-point group."""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from shala_bench import hookspecs
from shala_bench.errors import UnknownNameError, close_matches


@dataclass(frozen=True)
class ModelEntry:
    """A registered model. ``config``: its own settings' frozen dataclass (a `shala_bench.config.Config`,
    declared beside the model); ``config_defaults``: overrides of its defaults per profile (key: "quick") or per
    (dataset, profile) (key: ("polymnist-synth", "quick")). A model without settings of its own leaves both
    empty, and its factory is then called as (spec, recipe), as before protocol v2."""

    name: str
    factory: Callable[..., Any]  # (spec, recipe, config) -> MultimodalVAE
    card: str  # the model card; its first line is the one-line description
    config: type | None = None
    config_defaults: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        return self.card.strip().splitlines()[0] if self.card.strip() else ""

    def resolve(self, recipe, overrides: dict | None = None):
        """Its config under `recipe` (defaults <- profile <- dataset <- `overrides`, namespace-free keys), with
        where each value came from: a `shala_bench.config.Resolved`."""
        from shala_bench.config import NoConfig, resolve_config

        return resolve_config(self.config or NoConfig, self.name, self.config_defaults, recipe.dataset,
                              recipe.profile, overrides, recipe)

    def build(self, spec, recipe, config=None):
        """The model, with `config` (default: its resolved defaults under `recipe`)."""
        if self.config is None:
            return self.factory(spec, recipe)
        return self.factory(spec, recipe, config if config is not None else self.resolve(recipe).config)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Callable[..., Any]  # (protocol, cache_dir) -> LoadedDataset
    description: str
    profiles: dict = field(default_factory=dict)  # profile -> protocol overrides
    modality_range: tuple[int, int] = (1, 10**6)
    prepare: Callable[..., Any] | None = None  # (root, protocol, cache_dir=None, progress=True) -> report dict
    info: Callable[..., Any] | None = None  # (protocol, cache_dir=None) -> dict for `data info`
    # Conditional coherence of a model that ignores its input (1/C for C classes), for leaderboards that
    # read records written before evaluation recorded it; None: multi-label or unknown.
    coherence_chance: float | None = None
    # Where its official files come from (shala_bench.data.sources.DatasetSource): `shala-bench data sources`.
    source: Any = None
    # Its own settings (a shala_bench.config.Config dataclass) and their per-profile defaults, as for models;
    # resolved into the recipe's `dataset_settings`.
    config: type | None = None
    config_defaults: dict = field(default_factory=dict)
    # The validation metric a stage's early stopping maximises (shala_bench.validation): "coherence_cond_k1"
    # (balanced accuracy of the judge classifiers on modalities generated from one given modality) or "bound"
    # (minus the model's validation bound: for multi-label data, or modalities without a classifier).
    selection: str = "coherence_cond_k1"

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"DatasetEntry {self.name!r}: selection {self.selection!r} is not one of {SELECTIONS}")


SELECTIONS = ("coherence_cond_k1", "bound")


DIRECTIONS = ("higher", "lower", None)  # None: recorded, not ranked (a count, a chance level, a name)
CHANCE_TESTS = ("conditional", "joint", None)


@dataclass(frozen=True)
class MetricKey:
    """What one key (or an fnmatch pattern of keys, e.g. ``coherence_cond_k*``) of a metric's output means.

    ``direction``: "higher" or "lower" is better, or None for a value that is not ranked. ``chance``:
    which seed-level chance test marks its leaderboard cells (§): "conditional" (conditional coherence
    not above chance) or "joint" (that, or a collapsed joint sample). ``quick_biased``: biased by the
    small sample counts of profiles other than ``paper`` (marked ‡ there).
    """

    pattern: str
    direction: str | None
    description: str
    chance: str | None = None
    quick_biased: bool = False

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"MetricKey {self.pattern!r}: direction {self.direction!r} is not one of {DIRECTIONS}")
        if self.chance not in CHANCE_TESTS:
            raise ValueError(f"MetricKey {self.pattern!r}: chance {self.chance!r} is not one of {CHANCE_TESTS}")

    def matches(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.pattern)


@dataclass(frozen=True)
class MetricEntry:
    name: str
    compute: Callable[..., dict]  # (EvalContext) -> dict
    description: str
    order: int = 100  # evaluation order: cheap and prerequisite metrics first
    # Bump when the meaning or the computation of any key changes: records of different versions are
    # never ranked together (a leaderboard splits them into families, as a protocol change does).
    version: int = 1
    # Every key it writes, in order; the first pattern that matches a key describes it.
    keys: tuple[MetricKey, ...] = ()

    def key(self, key: str) -> MetricKey | None:
        return next((k for k in self.keys if k.matches(key)), None)


@dataclass(frozen=True)
class Registered:
    entry: Any
    source: str  # the distribution (and version) that registered it


class Registry:
    def __init__(self, load_entrypoints: bool = True, plugins=()):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if load_entrypoints:
            self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        for p in plugins:
            self.pm.register(p)

    def _collect(self, hook_name: str) -> dict[str, Registered]:
        sources = {id(p): f"{d.project_name} {d.version}" for p, d in self.pm.list_plugin_distinfo()}
        out: dict[str, Registered] = {}
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            src = sources.get(id(impl.plugin), f"local:{impl.plugin_name}")
            for entry in impl.function() or []:
                if entry.name in out:
                    raise UnknownNameError(f"{entry.name!r} registered twice ({out[entry.name].source} and {src})")
                out[entry.name] = Registered(entry, src)
        return dict(sorted(out.items()))

    @functools.cached_property
    def models(self) -> dict[str, Registered]:
        return self._collect("shala_bench_register_models")

    @functools.cached_property
    def datasets(self) -> dict[str, Registered]:
        return self._collect("shala_bench_register_datasets")

    @functools.cached_property
    def metrics(self) -> dict[str, Registered]:
        return self._collect("shala_bench_register_metrics")

    def unavailable(self) -> list[tuple[str, str]]:
        """(plugin, its one line) for each plugin that says it registered less than it offers
        (`shala_bench_unavailable`), e.g. for want of an optional dependency."""
        sources = {id(p): f"{d.project_name} {d.version}" for p, d in self.pm.list_plugin_distinfo()}
        out = []
        for impl in self.pm.hook.shala_bench_unavailable.get_hookimpls():
            line = impl.function()
            if line:
                src = sources.get(id(impl.plugin), "local")
                out.append((f"{impl.plugin_name} ({src})", str(line).strip().splitlines()[0]))
        return sorted(out)

    @staticmethod
    def _get(table: dict, kind: str, name: str):
        if name not in table:
            raise UnknownNameError(f"unknown {kind} {name!r}" + close_matches(name, table))
        return table[name].entry

    def get_model(self, name: str) -> ModelEntry:
        return self._get(self.models, "model", name)

    def get_dataset(self, name: str) -> DatasetEntry:
        return self._get(self.datasets, "dataset", name)

    def get_metric(self, name: str) -> MetricEntry:
        return self._get(self.metrics, "metric", name)

    def metric_key(self, key: str) -> tuple[MetricEntry, MetricKey] | None:
        """The registered metric that declares a record key, and its declaration (None: no metric does)."""
        for reg in self.metrics.values():
            if (k := reg.entry.key(key)) is not None:
                return reg.entry, k
        return None

    def metric_versions(self) -> dict[str, int]:
        """{metric name: version} of every registered metric."""
        return {name: reg.entry.version for name, reg in self.metrics.items()}

    def list(self, kind: str, pattern: str = "*") -> dict[str, Registered]:
        table = {"models": self.models, "datasets": self.datasets, "metrics": self.metrics}[kind]
        return {k: v for k, v in table.items() if fnmatch.fnmatch(k, pattern)}


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    return Registry()
