"""Plugin-owned settings: a model's (or a dataset's) own frozen config dataclass, resolved and hashed.

The recipe (`shala_bench.protocol`) holds only what every model shares. Everything that is one
model's alone — β where its paper sets it, K, a private latent size, a diffusion prior's widths
and budget — is a field of a frozen dataclass declared beside the model, in its own file, and
handed to the model's factory. A dataset plugin owns its settings the same way (frames per clip,
the official split); those are part of the recipe, since every model trained on the dataset
shares them.

Resolution, later wins: the dataclass defaults <- the entry's ``config_defaults[profile]`` <-
``config_defaults[(dataset, profile)]`` <- ``--set <namespace>.<key>=<value>`` (the namespace is
the model's or the dataset's registered name). A field declared with ``inherit("beta")`` takes
the recipe's value of that name unless a profile or the command line sets it: a model whose
paper fixes its own β keeps it relative to the shared one. Every value is type-checked from the
dataclass, the config validates itself (`validate`), and `sources` says where each value came
from (``shala-bench config`` prints them).

Identity: the **config hash** (sha256 of the resolved values' canonical JSON) is part of the run
id and of the record; it never decides what is ranked together (the recipe hash does).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from shala_bench.errors import ProtocolError, close_matches

INHERIT = "inherit"  # field metadata key: the recipe field this one defaults to
EVALUATION = "evaluation"  # field metadata key: read only at generation time (`shala-bench eval` may change it)
RANGE = "range"  # field metadata key: (check, what is accepted)


def setting(default, *, range: tuple | None = None, evaluation: bool = False, doc: str = ""):
    """A config field with its accepted values (see protocol's range helpers) and whether it is an evaluation
    setting (read only when generating, so re-evaluating a checkpoint may change it)."""
    return field(default=default, metadata={RANGE: range, EVALUATION: evaluation, "doc": doc})


def inherit(name: str, *, range: tuple | None = None, doc: str = ""):
    """A config field that takes the recipe's `name` (None in the dataclass) unless a profile or `--set` sets it."""
    return field(default=None, metadata={INHERIT: name, RANGE: range, "doc": doc})


@dataclass(frozen=True)
class Config:
    """Base of every model's and dataset's own settings. Subclasses add fields (`setting`, `inherit`) and may
    extend `validate` for what depends on several fields."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get(RANGE)
            v = getattr(self, f.name)
            if check is None or v is None:
                continue
            ok, accepted = check
            if isinstance(v, float) and v != v:
                raise ProtocolError(f"{self.namespace_hint()}{f.name} must be {accepted}, got nan")
            if not ok(v):
                raise ProtocolError(f"{self.namespace_hint()}{f.name} must be {accepted}, got {v!r}")

    def namespace_hint(self) -> str:
        return getattr(self, "_namespace", "") and f"{self._namespace}."

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """The config hash: the same canonical-JSON sha256 as a recipe's (results.protocol_digest), which is also
        what a record's `config_hash` is checked against."""
        from shala_bench.results import protocol_digest

        return protocol_digest(self.to_dict())

    @classmethod
    def evaluation_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(EVALUATION))


@dataclass(frozen=True)
class NoConfig(Config):
    """The config of a plugin that declares none: no settings of its own."""


# ---------------------------------------------------------------- accepted values: (check, what is accepted)
def gt(lo):
    return (lambda v: v > lo), f"> {lo}"


def ge(lo):
    return (lambda v: v >= lo), f">= {lo}"


def unit(closed: bool):
    return ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]") if closed else ((lambda v: 0.0 <= v < 1.0), "in [0, 1)")


def one_of(*choices):
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


# ---------------------------------------------------------------- values from the command line
def _base_type(tp) -> type:
    """int / float / bool / str of a field annotation (``float | None`` -> float)."""
    if isinstance(tp, str):
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp.split("|")[0].strip(), str)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if tp in (int, float, bool, str) else str


def coerce(what: str, tp, raw):
    """`raw` (a string from --set, or already a value) as the field's type; ProtocolError naming `what` otherwise."""
    typ = _base_type(tp)
    if not isinstance(raw, str):
        if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, typ) and not (typ is int and isinstance(raw, bool)):
            return raw
        raise ProtocolError(f"--set {what}={raw!r}: expected {typ.__name__}")
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        return str(raw)
    except ValueError:
        raise ProtocolError(f"--set {what}={raw}: expected {typ.__name__}") from None


# ---------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Resolved:
    config: Config
    sources: dict[str, str]  # field -> "default" | "profile" | "dataset" | "recipe" | "command line"


def _defaults_for(defaults: dict, dataset: str, profile: str) -> list[tuple[str, dict]]:
    out = []
    if profile in defaults:
        out.append(("profile", defaults[profile]))
    if (dataset, profile) in defaults:
        out.append(("dataset", defaults[(dataset, profile)]))
    return out


def resolve_config(cls: type[Config], namespace: str, defaults: dict, dataset: str, profile: str,
                   overrides: dict | None = None, recipe=None) -> Resolved:
    """The config of `namespace` (a model or dataset name): defaults <- profile <- (dataset, profile) <-
    overrides (keys without the namespace), inherited fields from `recipe`; type-checked and validated."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values, sources = {}, {}
    layers = _defaults_for(defaults, dataset, profile) + [("command line", overrides or {})]
    for source, layer in layers:
        for key, raw in layer.items():
            if key not in fields:
                raise ProtocolError(f"unknown setting {namespace}.{key}" + (close_matches(key, fields) if fields else
                                                                              f"; {namespace} has no settings of its own"))
            values[key] = coerce(f"{namespace}.{key}", fields[key].type, raw)
            sources[key] = source
    for name, f in fields.items():
        if name in values:
            continue
        parent = f.metadata.get(INHERIT)
        if parent and recipe is not None:
            values[name], sources[name] = getattr(recipe, parent), "recipe"
        else:
            sources[name] = "default"
    cfg = cls(**values)
    object.__setattr__(cfg, "_namespace", namespace)
    cfg.validate()
    return Resolved(cfg, sources)


def split_overrides(overrides: dict | None) -> tuple[dict, dict[str, dict]]:
    """{'beta': 2.5, 'mopoe.beta': '2.5'} -> ({'beta': 2.5}, {'mopoe': {'beta': '2.5'}})."""
    shared, spaced = {}, {}
    for key, value in (overrides or {}).items():
        if "." in key:
            ns, sub = key.split(".", 1)
            spaced.setdefault(ns, {})[sub] = value
        else:
            shared[key] = value
    return shared, spaced


def parse_pairs(pairs: list[str] | None) -> dict:
    """['steps=10', 'mopoe.beta=2.5'] -> {'steps': '10', 'mopoe.beta': '2.5'} (types are checked on resolution)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ProtocolError(f"--set {pair!r}: expected key=value or model.key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or key.startswith(".") or key.endswith("."):
            raise ProtocolError(f"--set {pair!r}: expected key=value or model.key=value")
        out[key] = raw
    return out


def describe(cfg: Config) -> dict[str, str]:
    """field -> its doc line (for `shala-bench config`)."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cfg)}


def field_names(cls: type[Config]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_record(cls: type[Config], values: dict) -> Any:
    """A config rebuilt from a record's `config` (unknown keys refused: the model's code changed)."""
    known = set(field_names(cls))
    extra = sorted(set(values) - known)
    if extra:
        raise ProtocolError(f"recorded setting {extra[0]!r} is not a setting of {cls.__name__} any more")
    return cls(**values)
