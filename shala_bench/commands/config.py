"""`shala-bench config`: the resolved settings of one run, and where each value came from."""

from __future__ import annotations

import json


def recipe_sources(dataset_entry, profile: str, overrides: dict) -> dict[str, str]:
    """recipe field -> default | profile | dataset | command line (the last layer that set it)."""
    from shala_bench.config import split_overrides
    from shala_bench.protocol import PROFILES

    out = {}
    for source, layer in (("profile", PROFILES.get(profile, {})), ("dataset", dataset_entry.profiles.get(profile, {})),
                          ("command line", split_overrides(overrides)[0])):
        out.update({k: source for k in layer})
    return out


def settings_table(values: dict, sources: dict[str, str], docs: dict[str, str] | None = None) -> str:
    from tabulate import tabulate

    rows = [[k, json.dumps(v), sources.get(k, "default"), (docs or {}).get(k, "")] for k, v in values.items()]
    return tabulate(rows, headers=["setting", "value", "from", ""], tablefmt="simple", disable_numparse=True) if rows else "  (none)"


def cmd_config(args) -> int:
    from shala_bench.config import describe
    from shala_bench.launch import RunSpec, check_namespaces, resolve
    from shala_bench.protocol import _FIXED, dataset_settings, parse_overrides
    from shala_bench.registry import get_registry

    reg = get_registry()
    overrides = parse_overrides(args.overrides)
    check_namespaces(overrides, {args.model, args.dataset}, reg, "this run")
    spec = RunSpec(model=args.model, dataset=args.dataset, profile=args.profile, overrides=tuple(overrides.items()))
    recipe, model_entry, ds_entry, cfg = resolve(spec, reg)
    from shala_bench.config import split_overrides

    data = dataset_settings(ds_entry, args.profile, split_overrides(overrides)[1].get(args.dataset))
    shared = {k: v for k, v in recipe.to_dict().items() if k not in _FIXED}
    if args.json:
        print(json.dumps({"recipe": recipe.to_dict(), "recipe_hash": recipe.hash,
                          "recipe_sources": {k: recipe_sources(ds_entry, args.profile, overrides).get(k, "default")
                                             for k in shared},
                          "dataset_settings": data.config.to_dict(), "dataset_sources": data.sources,
                          "config": cfg.config.to_dict(), "config_hash": cfg.config.hash, "config_sources": cfg.sources},
                         indent=2, sort_keys=True))
        return 0
    print(f"recipe: {args.dataset}, profile {args.profile}, protocol v{recipe.protocol_version}, numbers "
          f"v{recipe.numbers_version} — recipe hash {recipe.hash[:12]} (what is ranked together)")
    print(settings_table(shared, recipe_sources(ds_entry, args.profile, overrides)))
    print(f"\ndataset settings of {args.dataset} (part of the recipe; --set {args.dataset}.<key>=value):")
    print(settings_table(data.config.to_dict(), data.sources, describe(data.config)))
    print(f"\nmodel settings of {args.model} — config hash {cfg.config.hash[:8]} (part of the run id; "
          f"--set {args.model}.<key>=value):")
    print(settings_table(cfg.config.to_dict(), cfg.sources, describe(cfg.config)))
    evaluation = type(cfg.config).evaluation_fields()
    if evaluation:
        print(f"\nevaluation settings of {args.model} (read only when generating; `shala-bench eval` may change "
              f"them): {', '.join(evaluation)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print the resolved recipe and model settings of a run, and where each came from",
                       description="Resolve the settings a `run` with the same flags would use, without training: the "
                                   "shared recipe (its hash decides what is ranked together), the dataset's own "
                                   "settings, and the model's own config (its hash is part of the run id). Each value "
                                   "says where it came from: default (the dataclass), profile (the harness profile or "
                                   "the model's per-profile default), dataset (the dataset's profile or the model's "
                                   "per-(dataset, profile) default), recipe (a model setting that inherits the "
                                   "recipe's), command line (--set).")
    p.add_argument("--model", required=True, help="registered model name (see `shala-bench list models`)")
    p.add_argument("--dataset", default="polymnist-synth", help="registered dataset (default: %(default)s)")
    p.add_argument("--profile", default="quick", help="smoke, quick or paper (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="as for `run`: a recipe setting (beta=2.5) or a model's own (mopoe.beta=2.5); repeatable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_config)
