"""The recipe: one frozen, hashed set of the numbers every model shares, per (dataset, profile).

Every model trained under a recipe sees the same data, networks, likelihood, budget policy and
evaluation; its hash (the **recipe hash**, stored as a record's ``protocol_hash``) decides what
is ranked together. What belongs to one model alone is not here: it is the model's own config
(`shala_bench.config`), declared beside the model, hashed apart (the **config hash**, part of
the run id). A dataset's own settings (frames per clip, official split) are resolved the same
way and kept in the recipe as ``dataset_settings``, since every model on that dataset shares
them. `--set key=value` changes the recipe (and its hash); `--set <model>.key=value` only that
model's config.

The class keeps its historical name `Protocol`; `Recipe` is the same class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from shala_bench.config import coerce, parse_pairs, split_overrides
from shala_bench.config import ge as _ge, gt as _gt, one_of as _one_of, unit as _unit  # noqa: F401 (re-exported)
from shala_bench.errors import ProtocolError, close_matches

# Bump when the meaning of any field or of the evaluation changes.
PROTOCOL_VERSION = 2
# History: 1 — one flat protocol with every model's settings (records before issue 14).
#          2 — the recipe holds only shared settings; model and dataset settings are plugin-owned configs.

# The harness's numbers version: bump it in the same commit as any code change that changes the numbers a run
# gives under an unchanged protocol (a model's maths, a backbone, the trainer's step, a metric, the data builder),
# and refresh the golden record with `python tests/golden/update.py` (tests/test_golden.py fails until both are
# done). It is a field of every protocol, so it is part of the hash, the run id and of what `compare` ranks
# together: records made by code that gave other numbers are never merged with these, and a sweep re-runs them.
# Records without the field predate it (they mix code states; see leaderboards/records/).
# History: 1 — first versioned numbers (issue 17).
#          2 — fused Adam, encoder heads as one matmul (issue 13: the same maths, other float rounding);
#              balanced and chance-corrected coherences (issue 15).
#          3 — training to a validation plateau (issue 14): budgets in samples, a run evaluates its best
#              validation weights (best.pt), each stage ends restored to its best weights.
NUMBERS_VERSION = 3


@dataclass(frozen=True)
class Protocol:
    dataset: str
    profile: str
    protocol_version: int = PROTOCOL_VERSION
    numbers_version: int = NUMBERS_VERSION

    # --- data
    n_modalities: int = 5
    data_seed: int = 0
    n_train: int = 10000
    n_val: int = 500
    n_test: int = 2000
    # the dataset plugin's own settings, resolved from its config class (shala_bench.config); {} when it has none
    dataset_settings: dict = field(default_factory=dict)

    # --- shared training recipe (identical for every model; a model whose paper sets its own β declares it
    #     in its config with `inherit("beta")`, so this is the default it keeps relative to)
    latent_dim: int = 32
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    likelihood_scale: float = 0.75  # Laplace scale of image likelihoods (MoPoE, MMVAE+)
    grad_clip: float = 0.0  # 0 = off
    checkpoint_every: int = 250  # optimizer steps
    log_every: int = 25  # optimizer steps

    # --- budget policy (issue 14): how long a stage may train and when it has plateaued, in training samples
    # (the same budget at any batch size; steps = samples // batch). A model declares each stage's budget from
    # these (MultimodalVAE.stage_budget); the trainer validates every `eval_every` samples, keeps the best
    # weights (best.pt) and stops a stage after `patience` evaluations without an improvement > `min_delta`
    # of the selection metric (the dataset's, registry.DatasetEntry.selection, or the stage's own bound).
    max_train_samples: int = 128_000  # cap on the training samples of a stage (1,000 steps of 128)
    eval_every: int = 12_800  # training samples between validation evaluations (rounded to whole steps)
    patience: int = 0  # evaluations without improvement before a stage stops; 0 = never stop early
    min_delta: float = 0.0  # the least rise of a coherence selection metric that counts as an improvement
    # the least fall of a stage's validation loss (its negative bound, for a stage that selects on it) that counts
    # as an improvement, as a fraction of the best loss so far: a bound is in nats that grow with M and the
    # image size, so an absolute min_delta means nothing there (0.005 nats of a 5,700-nat loss never stops it)
    min_rel_delta: float = 0.0
    val_n: int = 500  # validation tuples the selection metric reads (capped at n_val; 0 = no validation)
    # --- end budget policy

    # --- evaluation
    classifier_epochs: int = 10
    classifier_batch: int = 256
    eval_n: int = 1000  # test tuples for conditional coherence and probes
    joint_n: int = 1000  # unconditional samples for joint coherence
    max_subsets_per_k: int = 10  # when M > 5, a seeded sample of subsets per size k
    fid_n: int = 0  # Inception-FID samples; 0 = off
    fd_n: int = 1000  # in-domain Frechet-distance samples
    frechet_cond_subsets: int = 0  # conditional FID and FD: source subsets per size k (0 = coherence's)
    probe_n: int = 1000  # train-split encodings the latent probe is fitted on (tested on eval_n test tuples)

    # --- numerics (recorded; off by default)
    bf16: bool = False
    compile: bool = False

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def to_dict(self) -> dict:
        """The canonical form (records store it, the hash is its JSON's): a field added to the recipe after
        records were made (LATER_FIELDS) is left out at the value that means "as before", so every earlier
        recipe keeps its hash, and its records their family."""
        d = dataclasses.asdict(self)
        for k, before in LATER_FIELDS.items():
            if d[k] == before:
                del d[k]
        return d


Recipe = Protocol

# Recipe fields added after protocol v2's first records, with the value that reproduces what the code did before
# them (a recorded recipe without the field was trained under it; see Protocol.to_dict and trained_fields).
LATER_FIELDS: dict[str, object] = {"min_rel_delta": 0.0}


# Profile defaults shared by every dataset; a dataset plugin adds its own on top.
PROFILES: dict[str, dict] = {
    # Seconds: for tests. Numbers are too small to mean anything.
    "smoke": dict(n_train=256, n_val=32, n_test=64, batch_size=32, max_train_samples=192, eval_every=96,
                  checkpoint_every=3, log_every=2, classifier_epochs=1, eval_n=64, joint_n=64, probe_n=32, fd_n=64),
    # Minutes on a 2-core CPU; each dataset sets its budget, validated every eighth of it. Stages stop after
    # 3 evaluations without improvement (patience) or at max_train_samples. 250 validation tuples: at M = 5 on
    # polymnist-synth a coherence validation of 500 took 7-15 s (MoPoE, one thread, 70 % of it the judges'
    # 10,000 classifications), 8 of them 15-30 % of MoPoE's training.
    "quick": dict(patience=3, val_n=250),
    # The published recipe, for GPUs.
    "paper": dict(),
}

# The evaluation section: `shala-bench eval` re-evaluates a checkpoint with these taken from the
# current profile (everything else from the run's record, so the trained model still fits).
EVALUATION_FIELDS = ("classifier_epochs", "classifier_batch", "eval_n", "joint_n", "max_subsets_per_k", "fid_n",
                     "fd_n", "frechet_cond_subsets", "probe_n")
# (a model's own evaluation settings, e.g. a diffusion prior's sampling steps, are flagged in its config)

FIELDS = {f.name: f for f in dataclasses.fields(Protocol)}
_FIXED = {"dataset", "profile", "protocol_version", "numbers_version", "dataset_settings"}


def trained_fields(recorded: dict) -> dict:
    """The settings of a recorded recipe that its trained weights depend on: every known field but the
    fixed identity (dataset, profile, versions) and the evaluation section, and the dataset's own settings
    (namespaced), as overrides for make_protocol."""
    out = {k: v for k, v in recorded.items() if k in FIELDS and k not in _FIXED and k not in EVALUATION_FIELDS}
    out.update({k: before for k, before in LATER_FIELDS.items() if k not in recorded})  # trained before the field
    out.update({f"{recorded['dataset']}.{k}": v for k, v in (recorded.get("dataset_settings") or {}).items()})
    return out


# Settings that protocol v1 held for one model or dataset, and where they live now (for the error message).
MOVED = {"mvae_subsets": "mvae.subsets", "iwae_k": "mmvae.K (and mmvae+.K)", "w_dim": "mmvae+.w_dim",
         "shala_embed_dim": "shala.embed_dim", "shala_modality_dropout": "shala.modality_dropout",
         "prior_steps": "shala.prior_max_samples", "prior_max_samples": "shala.prior_max_samples", "prior_lr": "shala.prior_lr", "steps": "max_train_samples (in samples)", "diffusion_T": "shala.diffusion_T",
         "sample_steps": "shala.sample_steps", "guidance_scale": "shala.guidance_scale",
         "cond_dropout": "shala.cond_dropout", "shala_denoiser_width": "shala.denoiser_width",
         "shala_denoiser_depth": "shala.denoiser_depth", "shala_ddim_eta": "shala.ddim_eta",
         "shala_joint_modality_dropout": "shala-cond.modality_dropout (and shala-post's)",
         "shala_post_weight": "shala-post.post_weight", "shala_post_steps": "shala-post.post_steps",
         "shala_post_langevin": "shala-post.post_langevin", "shala_post_snr": "shala-post.post_snr",
         "ntu_frames": "ntu120.frames", "ntu_split": "ntu120.split", "ucf_frames": "ucf101.frames",
         "ucf_split": "ucf101.split"}


def unknown_key(key: str) -> ProtocolError:
    if key in MOVED:
        return ProtocolError(f"--set {key}: not a shared recipe setting since protocol v2; it is the plugin's own "
                             f"setting {MOVED[key]} (--set {MOVED[key].split()[0]}=...)")
    return ProtocolError(f"--set {key}: unknown recipe setting" + close_matches(key, set(FIELDS) - _FIXED)
                         + " (a model's own setting is --set <model>.<key>=value; `shala-bench config --model M` "
                           "lists them)")


def parse_overrides(pairs: list[str] | None) -> dict:
    """['steps=10', 'mopoe.beta=2.5'] -> {'steps': 10, 'mopoe.beta': '2.5'}: recipe keys type-checked against
    the recipe now; namespaced keys (`<model or dataset>.<key>`) kept as text, checked against their plugin's
    config when a run resolves it (`shala_bench.config.resolve_config`)."""
    out = {}
    for key, raw in parse_pairs(pairs).items():
        out[key] = raw if "." in key else _recipe_value(key, raw)
    return out


def _recipe_value(key: str, raw):
    if key not in FIELDS or key in _FIXED:
        raise unknown_key(key)
    return coerce(key, FIELDS[key].type, raw)


def make_protocol(dataset_entry, profile: str, overrides: dict | None = None) -> Protocol:
    """Defaults <- harness profile <- dataset profile <- user overrides; the dataset's own settings from its
    config (namespace: its name; other namespaces are models' and ignored here); validated and frozen."""
    profiles = dataset_entry.profiles
    if profile not in profiles:
        from shala_bench.errors import UnknownNameError

        raise UnknownNameError(f"unknown profile {profile!r} for dataset {dataset_entry.name}" + close_matches(profile, profiles))
    shared, spaced = split_overrides(overrides)
    values = {**PROFILES.get(profile, {}), **profiles[profile]}
    for key, raw in shared.items():
        values[key] = _recipe_value(key, raw)
    for key in values:
        if key not in FIELDS or key in _FIXED:
            raise unknown_key(key)
    data = dataset_settings(dataset_entry, profile, spaced.get(dataset_entry.name))
    proto = Protocol(dataset=dataset_entry.name, profile=profile, dataset_settings=data.config.to_dict(), **values)
    validate(proto, dataset_entry)
    return proto


def dataset_settings(dataset_entry, profile: str, overrides: dict | None = None):
    """The dataset's own config, resolved (shala_bench.config.Resolved)."""
    from shala_bench.config import NoConfig, resolve_config

    cls = getattr(dataset_entry, "config", None) or NoConfig
    return resolve_config(cls, dataset_entry.name, getattr(dataset_entry, "config_defaults", {}) or {},
                          dataset_entry.name, profile, overrides)


# The accepted values of every field (the fixed identity aside): (check, what is accepted). Counts are > 0
# where zero would mean "nothing" (no steps, no samples); evaluation counts that may be 0 switch their
# metric off, and the record then says `<metric>_unavailable` with why. (The helpers live in
# shala_bench.config, where plugins' configs use them too.)
RANGES: dict[str, tuple] = {
    # data
    "n_modalities": _gt(0), "data_seed": _ge(0), "n_train": _gt(0), "n_val": _ge(0), "n_test": _gt(0),
    # shared training recipe
    "latent_dim": _gt(0), "batch_size": _gt(0), "lr": _gt(0), "beta": _ge(0),
    "likelihood_scale": _gt(0), "grad_clip": _ge(0), "checkpoint_every": _gt(0), "log_every": _gt(0),
    # budget policy
    "max_train_samples": _gt(0), "eval_every": _gt(0), "patience": _ge(0), "min_delta": _ge(0),
    "min_rel_delta": _ge(0), "val_n": _ge(0),
    # evaluation (fid_n, fd_n, probe_n = 0: that metric off, recorded as unavailable)
    "classifier_epochs": _gt(0), "classifier_batch": _gt(0), "eval_n": _gt(0), "joint_n": _gt(0),
    "max_subsets_per_k": _gt(0), "fid_n": _ge(0), "fd_n": _ge(0), "frechet_cond_subsets": _ge(0), "probe_n": _ge(0),
    # numerics
    "bf16": _one_of(False, True), "compile": _one_of(False, True),
}


def validate(p: Protocol, dataset_entry=None) -> None:
    """Every field within its range (RANGES), then what depends on the dataset; ProtocolError otherwise."""
    for k, (ok, accepted) in RANGES.items():
        v = getattr(p, k)
        if isinstance(v, float) and v != v:
            raise ProtocolError(f"{k} must be {accepted}, got nan")
        if not ok(v):
            raise ProtocolError(f"{k} must be {accepted}, got {v!r}")
    lo, hi = getattr(dataset_entry, "modality_range", (1, 10**6))
    if not lo <= p.n_modalities <= hi:
        raise ProtocolError(f"n_modalities={p.n_modalities} not supported by {p.dataset}: use {lo}..{hi}")
