"""Inception FID per image modality, through torch-fidelity, from local weights only.

What it measures: the Fréchet distance (Heusel et al., 2017) between Inception-v3 pool
features (2048-d, torch-fidelity's TF-compatible ``inception-v3-compat`` extractor) of
generated and of real test images, per image modality: for unconditional samples
(`fid_joint_<m>`, mean `fid_mean`) and for conditional generation of every missing image
modality from each source subset of the first `fid_n` test tuples, averaged per size k
(`fid_cond_k<k>`, mean `fid_cond_mean`). The subsets are coherence's, or a seeded
`frechet_cond_subsets` per k (Inception is slow on CPUs).

Protocol: `fid_n` generated images per set against the first `fid_n` test images
(`paper`: 10,000 as in MMVAE+; `quick`: a small count, stamped as `fid_n` and flagged by
`fid_note`: FID is biased upward at small n, so only compare values with equal `fid_n`;
0 = off). The loop over generated sets and the cached real statistics (per dataset, split,
modality and extractor hash) are the one Fréchet path of `metrics/frechet.py`, which the
in-domain FD runs too.

Weights: a local file only, never downloaded and never untrained. Looked up in order:
`--inception-weights PATH`, env SHALA_BENCH_INCEPTION_WEIGHTS, or torch hub's checkpoint
folder where torch-fidelity itself caches its download (``weights-inception-2015-12-05-
6726825d.pth``; pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` is accepted too).
The file must have the published sha256; otherwise the record gets a `fid_unavailable`
entry with a one-line hint of where to put the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from shala_bench.data.cache import cache_key, default_cache_dir  # noqa: F401 (default_cache_dir: the stats' root)
from shala_bench.hookspecs import hookimpl
from shala_bench.metrics.frechet import FeatureSpace, frechet_keys, frechet_scores
from shala_bench.registry import MetricEntry

INCEPTION = "inception-v3-compat"
ENV = "SHALA_BENCH_INCEPTION_WEIGHTS"
# torch-fidelity's release file (URL_INCEPTION_V3 in torch_fidelity/feature_extractor_inceptionv3.py,
# https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth),
# 95,628,359 bytes; sha256 as published alongside that file by its users (its first 8 hex digits are the
# name's hash prefix, torch hub's check_hash convention). pytorch-fid's pt_inception-2015-12-05-6726825d.pth
# (the same converted TF graph, same prefix) is looked for too and must pass the same check.
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PAPER_FID_N = 10_000
BATCH = 64


# ---------------------------------------------------------------- the weights file
def hub_checkpoint_dir() -> Path:
    """Where torch hub (and so torch-fidelity) keeps downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def where_to_put() -> str:
    return (f"put {INCEPTION_FILES[0]} (torch-fidelity v0.2.0 release, sha256 {INCEPTION_SHA256[:16]}...) in "
            f"{hub_checkpoint_dir()}/, or pass --inception-weights PATH, or set {ENV}")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # keyed by size and mtime: a replaced file is re-hashed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def find_inception_weights(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str | None]:
    """(verified path, None), or (None, one-line reason with where to put the file).

    An explicit path (option, then env) is the only candidate when given: a wrong file
    named by the user is reported, never silently replaced by another one.
    """
    if explicit or os.environ.get(ENV):
        src, raw = ("--inception-weights", explicit) if explicit else (ENV, os.environ[ENV])
        candidates, named = [Path(raw).expanduser()], f"{src} {raw}"
    else:
        candidates, named = [hub_checkpoint_dir() / f for f in INCEPTION_FILES], None
    for path in candidates:
        if not path.is_file():
            continue
        digest = sha256_file(path)
        if digest != INCEPTION_SHA256:
            return None, (f"Inception weights {path} have sha256 {digest[:16]}..., not the published "
                          f"{INCEPTION_SHA256[:16]}...: {where_to_put()}")
        return path, None
    where = f" at {named}" if named else ""
    return None, f"Inception weights not found{where}: {where_to_put()}"


@contextlib.contextmanager
def no_download():
    """Make every URL loader torch-fidelity can reach raise instead of downloading."""
    def refuse(url, *a, **kw):
        raise RuntimeError(f"shala-bench never downloads weights (refused {url}): {where_to_put()}")

    patched = []
    mods = [torch.hub] + [m for n, m in list(sys.modules.items()) if n.startswith("torch_fidelity") and m]
    for mod in mods:
        for attr in ("load_state_dict_from_url", "download_url_to_file"):
            if hasattr(mod, attr):
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, refuse)
    try:
        yield
    finally:
        for mod, attr, orig in reversed(patched):
            setattr(mod, attr, orig)


# ---------------------------------------------------------------- the extractor
@dataclass
class Extractor:
    """A torch-fidelity feature extractor and the identity its cached statistics are keyed by."""

    name: str
    layer: str
    module: torch.nn.Module
    identity: str  # hash of (name, layer, weights, torch-fidelity version)
    device: torch.device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W), C in {1, 3} -> (N, F) float64 features on the CPU."""
        out = []
        for i in range(0, len(images), BATCH):
            x = images[i:i + BATCH].to(self.device)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            feats = self.module.convert_features_tuple_to_dict(self.module(x))[self.layer]
            out.append(feats.double().cpu())
        return torch.cat(out)


def make_extractor(name: str, device="cpu", weights_path: Path | None = None,
                   weights_sha256: str | None = None) -> Extractor:
    """Build a registered torch-fidelity extractor with its FID feature layer, downloads refused."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    with no_download():
        module = create_feature_extractor(name, [layer], cuda=False, verbose=False,
                                          feature_extractor_weights_path=str(weights_path) if weights_path else None)
    device = torch.device(device)
    module.to(device)
    if weights_sha256 is None:  # no file: the weights are whatever the extractor built; hash them
        h = hashlib.sha256()
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        weights_sha256 = h.hexdigest()
    identity = cache_key(dict(name=name, layer=layer, weights=weights_sha256,
                              torch_fidelity=torch_fidelity.__version__))
    return Extractor(name, layer, module, identity, device)


@functools.lru_cache(maxsize=2)
def inception(path: str, device: str) -> Extractor:
    """The Inception extractor for a verified weights file (built once per process)."""
    return make_extractor(INCEPTION, device, Path(path), INCEPTION_SHA256)


# ---------------------------------------------------------------- the metric
def to_uint8(x: Tensor) -> Tensor:
    """Generated floats in [0, 1] -> uint8 pixels, as real images are stored."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def compute_fid(ctx, extractor: Extractor) -> dict:
    """FID of unconditional and conditional generation of every image modality (see the module doc)."""
    model, p = ctx.model, ctx.protocol
    images = [m for m in model.modalities if ctx.data.spec.modality(m).kind == "image"]
    if not images:
        return {"fid_unavailable": f"no image modality in {ctx.data.spec.name}"}
    n = len(ctx.data.splits["test"].head(p.fid_n))
    res: dict = {"fid_n": n, "fid_extractor": f"{extractor.name}/{extractor.layer}",
                 "fid_extractor_hash": extractor.identity}
    if n < PAPER_FID_N:
        res["fid_note"] = f"n={n} < {PAPER_FID_N}: biased upward; compare only with equal fid_n"
    space = FeatureSpace(extractor.name, lambda m: extractor.identity, lambda m, raw: extractor(raw),
                         lambda m, x: extractor(to_uint8(x)), chunk=250)
    res.update(frechet_scores(ctx, space, "fid", images, n))
    return res


_warned: set[str] = set()


def inception_fid(ctx) -> dict:
    if ctx.protocol.fid_n <= 0:
        return {"fid_unavailable": "fid_n = 0 in this protocol: Inception FID is off"}
    path, why = find_inception_weights(ctx.options.get("inception_weights"))
    if path is None:
        if why not in _warned:  # once per process, not once per run of a sweep
            _warned.add(why)
            print(f"shala-bench: warning: FID skipped: {why}", file=sys.stderr)
        return {"fid_unavailable": why}
    return compute_fid(ctx, inception(str(path), str(ctx.device)))


@hookimpl
def shala_bench_register_metrics():
    return [MetricEntry("fid", inception_fid,
                        "Inception FID (torch-fidelity inception-v3-compat, local hash-checked weights) per image "
                        "modality, unconditional and conditional per k", 70,
                        keys=frechet_keys("fid", "Inception FID", quick_biased=True))]
