"""The protocol: one frozen, hashed set of numbers per (dataset, profile).

Every model trained under a protocol sees the same data, networks, budget and
evaluation. The settings of all models live in the one protocol (a model ignores the
ones that are not its own), so every model run under a profile carries the same hash
and `compare` can rank them together; a `--set` override changes the hash of the runs
it touches, and those are then never ranked against the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from shala_bench.errors import ProtocolError, close_matches

# Bump when the meaning of any field or of the evaluation changes.
PROTOCOL_VERSION = 1

# The harness's numbers version: bump it in the same commit as any code change that changes the numbers a run
# gives under an unchanged protocol (a model's maths, a backbone, the trainer's step, a metric, the data builder),
# and refresh the golden record with `python tests/golden/update.py` (tests/test_golden.py fails until both are
# done). It is a field of every protocol, so it is part of the hash, the run id and of what `compare` ranks
# together: records made by code that gave other numbers are never merged with these, and a sweep re-runs them.
# Records without the field predate it (they mix code states; see leaderboards/records/).
# History: 1 — first versioned numbers (issue 17).
#          2 — fused Adam, encoder heads as one matmul (issue 13: the same maths, other float rounding);
#              balanced and chance-corrected coherences (issue 15).
NUMBERS_VERSION = 2


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
    # NTU RGB+D 120 (read only by the ntu120 dataset): frames per sequence after resampling,
    # and the official benchmark split, "xsub" (cross-subject) or "xset" (cross-setup)
    ntu_frames: int = 32
    ntu_split: str = "xsub"
    # UCF101 (read only by the ucf101 dataset): frames per clip (uniformly spaced over the video),
    # and which official train/test list, 1..3
    ucf_frames: int = 8
    ucf_split: int = 1
    # polymnist-synth (read only by it): which version of its builder, 1 (20x20 soft digits on colour-noise
    # textures) or 2 (28x28 sharpened digits on smooth textures, closer to PolyMNIST); see
    # shala_bench/data/polymnist_synth.py. With protocol v2 it moves to the dataset plugin's own config.
    synth_version: int = 1

    # --- shared training recipe (identical for every model)
    latent_dim: int = 32
    batch_size: int = 128
    steps: int = 1000  # optimizer steps of the "vae" stage
    lr: float = 1e-3
    beta: float = 1.0
    likelihood_scale: float = 0.75  # Laplace scale of image likelihoods (MoPoE, MMVAE+)
    grad_clip: float = 0.0  # 0 = off
    checkpoint_every: int = 250
    log_every: int = 25

    # --- model-specific settings (each model reads only its own)
    mvae_subsets: int = 1  # random-subset ELBOs per step besides joint + unimodal (Wu & Goodman)
    iwae_k: int = 4  # importance samples of MMVAE and MMVAE+
    w_dim: int = 32  # modality-specific latent size of MMVAE+
    shala_embed_dim: int = 64  # ShaLa fusion width
    shala_modality_dropout: float = 0.5
    prior_steps: int = 1000  # optimizer steps of ShaLa's "prior" stage
    prior_lr: float = 1e-3
    diffusion_T: int = 1000
    sample_steps: int = 50
    guidance_scale: float = 1.0
    cond_dropout: float = 0.2
    # ShaLa's latent denoiser (plugins/latent_diffusion.py): residual-MLP width and depth, DDIM eta
    # (0 = deterministic DDIM, 1 = ancestral); the paper does not publish them.
    shala_denoiser_width: int = 256
    shala_denoiser_depth: int = 3
    shala_ddim_eta: float = 0.0
    # stage-1 modality dropout of shala-cond and shala-post (0 = the plain joint VAE, their default); a trained
    # setting, so the selection study can measure whether their stage 1 needs it
    shala_joint_modality_dropout: float = 0.0
    # shala-post's training-free posterior sampling p(z | X_S) ∝ p_diff(z) Π_{m∈S} p(x_m | z) (evaluation
    # settings): likelihood weight w (1 = DPS's approximate posterior), predictor steps, Langevin corrector
    # steps per level (0 = plain DPS) and the corrector's step-size ratio. With protocol v2 (issue 14) these
    # and the other shala_* fields move to the ShaLa plugin's own config.
    shala_post_weight: float = 1.0
    shala_post_steps: int = 25
    shala_post_langevin: int = 0
    shala_post_snr: float = 0.16

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
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Profile defaults shared by every dataset; a dataset plugin adds its own on top.
PROFILES: dict[str, dict] = {
    # Seconds: for tests. Numbers are too small to mean anything.
    "smoke": dict(n_train=256, n_val=32, n_test=64, batch_size=32, steps=6, checkpoint_every=3, log_every=2,
                  prior_steps=6, diffusion_T=50, sample_steps=5, classifier_epochs=1, eval_n=64, joint_n=64, probe_n=32,
                  fd_n=64, iwae_k=2, shala_post_steps=5),
    # Minutes on a 2-core CPU.
    "quick": dict(),
    # The published recipe, for GPUs.
    "paper": dict(),
}

# The evaluation section: `shala-bench eval` re-evaluates a checkpoint with these taken from the
# current profile (everything else from the run's record, so the trained model still fits).
EVALUATION_FIELDS = ("classifier_epochs", "classifier_batch", "eval_n", "joint_n", "max_subsets_per_k", "fid_n",
                     "fd_n", "frechet_cond_subsets", "probe_n",
                     # sampling settings of a trained diffusion prior: read only at generation time
                     "sample_steps", "guidance_scale", "shala_ddim_eta",
                     "shala_post_weight", "shala_post_steps", "shala_post_langevin", "shala_post_snr")

FIELDS = {f.name: f for f in dataclasses.fields(Protocol)}
_FIXED = {"dataset", "profile", "protocol_version", "numbers_version"}


def trained_fields(recorded: dict) -> dict:
    """The settings of a recorded protocol that its trained weights depend on: every known field but the
    fixed identity (dataset, profile, version) and the evaluation section, as overrides for make_protocol."""
    return {k: v for k, v in recorded.items() if k in FIELDS and k not in _FIXED and k not in EVALUATION_FIELDS}


def _coerce(key: str, raw: str):
    typ = FIELDS[key].type
    typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ) if isinstance(typ, str) else typ
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
        raise ProtocolError(f"--set {key}={raw}: expected {typ.__name__}") from None


def parse_overrides(pairs: list[str] | None) -> dict:
    """['steps=10', 'beta=2.5'] -> {'steps': 10, 'beta': 2.5}, type-checked against Protocol."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ProtocolError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in FIELDS or key in _FIXED:
            raise ProtocolError(f"--set {key}: unknown protocol key" + close_matches(key, set(FIELDS) - _FIXED))
        out[key] = _coerce(key, raw)
    return out


def make_protocol(dataset_entry, profile: str, overrides: dict | None = None) -> Protocol:
    """Defaults <- harness profile <- dataset profile <- user overrides; validated and frozen."""
    profiles = dataset_entry.profiles
    if profile not in profiles:
        from shala_bench.errors import UnknownNameError

        raise UnknownNameError(f"unknown profile {profile!r} for dataset {dataset_entry.name}" + close_matches(profile, profiles))
    values = {**PROFILES.get(profile, {}), **profiles[profile], **(overrides or {})}
    for key in values:
        if key not in FIELDS or key in _FIXED:
            raise ProtocolError(f"unknown protocol key {key!r}" + close_matches(key, set(FIELDS) - _FIXED))
    proto = Protocol(dataset=dataset_entry.name, profile=profile, **values)
    validate(proto, dataset_entry)
    return proto


# The accepted values of every field (the fixed identity aside): (check, what is accepted). Counts are > 0
# where zero would mean "nothing" (no steps, no samples); evaluation counts that may be 0 switch their
# metric off, and the record then says `<metric>_unavailable` with why.
def _gt(lo):
    return (lambda v: v > lo), f"> {lo}"


def _ge(lo):
    return (lambda v: v >= lo), f">= {lo}"


def _unit(closed: bool):
    return ((lambda v: 0.0 <= v <= 1.0), "in [0, 1]") if closed else ((lambda v: 0.0 <= v < 1.0), "in [0, 1)")


def _one_of(*choices):
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


RANGES: dict[str, tuple] = {
    # data
    "n_modalities": _gt(0), "data_seed": _ge(0), "n_train": _gt(0), "n_val": _ge(0), "n_test": _gt(0),
    "ntu_frames": _gt(0), "ntu_split": _one_of("xsub", "xset"), "ucf_frames": _gt(0), "ucf_split": _one_of(1, 2, 3),
    "synth_version": _one_of(1, 2),
    # shared training recipe
    "latent_dim": _gt(0), "batch_size": _gt(0), "steps": _gt(0), "lr": _gt(0), "beta": _ge(0),
    "likelihood_scale": _gt(0), "grad_clip": _ge(0), "checkpoint_every": _gt(0), "log_every": _gt(0),
    # model-specific
    "mvae_subsets": _ge(0), "iwae_k": _gt(0), "w_dim": _gt(0), "shala_embed_dim": _gt(0),
    "shala_modality_dropout": _unit(False), "prior_steps": _gt(0), "prior_lr": _gt(0), "diffusion_T": _gt(0),
    "sample_steps": _gt(0), "guidance_scale": _ge(0), "cond_dropout": _unit(False), "shala_denoiser_width": _gt(0),
    "shala_denoiser_depth": _gt(0), "shala_ddim_eta": _unit(True), "shala_joint_modality_dropout": _unit(False),
    # shala-post's posterior sampler (evaluation settings; move to the plugin's config with protocol v2)
    "shala_post_weight": _ge(0), "shala_post_steps": _gt(0), "shala_post_langevin": _ge(0), "shala_post_snr": _gt(0),
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
    if p.sample_steps > p.diffusion_T:
        raise ProtocolError(f"sample_steps={p.sample_steps} must be <= diffusion_T={p.diffusion_T}")
    lo, hi = getattr(dataset_entry, "modality_range", (1, 10**6))
    if not lo <= p.n_modalities <= hi:
        raise ProtocolError(f"n_modalities={p.n_modalities} not supported by {p.dataset}: use {lo}..{hi}")
