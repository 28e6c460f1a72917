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
0 = off). Real statistics are cached per (dataset, split, modality, extractor hash) under
the cache folder and reused by every model.

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
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from shala_bench.data.cache import cache_key, default_cache_dir
from shala_bench.hookspecs import hookimpl
from shala_bench.metrics.coherence import subsets_by_size
from shala_bench.metrics.frechet import frechet_distance, gaussian_statistics
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


# ---------------------------------------------------------------- statistics
def cond_subsets(modalities: list[str], protocol, seed: int) -> dict[int, list[tuple[str, ...]]]:
    """Source subsets per size k for conditional FID and FD: coherence's, or a seeded `frechet_cond_subsets` per k."""
    by_k = subsets_by_size(modalities, protocol.max_subsets_per_k, protocol.data_seed)
    n = protocol.frechet_cond_subsets
    if n > 0:
        rng = random.Random(seed)
        by_k = {k: sorted(rng.sample(S, n)) if len(S) > n else S for k, S in by_k.items()}
    return by_k


def to_uint8(x: Tensor) -> Tensor:
    """Generated floats in [0, 1] -> uint8 pixels, as real images are stored."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def real_statistics(ctx, extractor: Extractor, modality: str, n: int, split: str = "test") -> dict:
    """Statistics of the first n real images of a split, cached per (dataset, split, modality, extractor)."""
    data = ctx.data
    key = dict(dataset=ctx.protocol.dataset, data=Path(data.cache_path).name if data.cache_path else "",
               source=data.source, n_modalities=len(data.spec.modalities), data_seed=ctx.protocol.data_seed,
               split=split, modality=modality, n=n, extractor=extractor.identity)
    root = Path(ctx.cache_dir or default_cache_dir()) / "fid_stats"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{ctx.protocol.dataset}-{split}-{modality}-{extractor.name}-{cache_key(key)}.npz"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            with np.load(path) as f:
                return {"mu": f["mu"], "sigma": f["sigma"]}
        stats = gaussian_statistics(extractor(data.splits[split].data[modality][:n]))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **stats)
        os.replace(tmp, path)
    return stats


def compute_fid(ctx, extractor: Extractor) -> dict:
    """FID of unconditional and conditional generation of every image modality (see the module doc)."""
    model, p = ctx.model, ctx.protocol
    images = [m for m in model.modalities if ctx.data.spec.modality(m).kind == "image"]
    if not images:
        return {"fid_unavailable": f"no image modality in {ctx.data.spec.name}"}
    test = ctx.test(p.fid_n)
    n = len(test)
    res: dict = {"fid_n": n, "fid_extractor": f"{extractor.name}/{extractor.layer}",
                 "fid_extractor_hash": extractor.identity}
    if n < PAPER_FID_N:
        res["fid_note"] = f"n={n} < {PAPER_FID_N}: biased upward; compare only with equal fid_n"
    real = {m: real_statistics(ctx, extractor, m, n) for m in images}

    gen: dict[str, list[Tensor]] = {m: [] for m in images}
    for i in range(0, n, 250):
        out = model.sample(min(250, n - i))
        for m in images:
            gen[m].append(extractor(to_uint8(out[m])))
    for m in images:
        res[f"fid_joint_{m}"] = frechet_distance(gaussian_statistics(torch.cat(gen[m])), real[m])
    res["fid_mean"] = float(np.mean([res[f"fid_joint_{m}"] for m in images]))

    if len(model.modalities) > 1:
        x = {m: torch.cat([b[m] for b, _ in ctx.batches(test)]) for m in model.modalities}
        per_k = {}
        for k, subsets in cond_subsets(model.modalities, p, ctx.seed).items():
            values = []
            for S in subsets:
                targets = [m for m in images if m not in S]
                if not targets:
                    continue
                feats: dict[str, list[Tensor]] = {t: [] for t in targets}
                for i in range(0, n, 250):
                    out = model.generate({m: x[m][i:i + 250] for m in S}, targets)
                    for t in targets:
                        feats[t].append(extractor(to_uint8(out[t])))
                values += [frechet_distance(gaussian_statistics(torch.cat(feats[t])), real[t]) for t in targets]
            if values:
                per_k[k] = float(np.mean(values))
        res.update({f"fid_cond_k{k}": v for k, v in per_k.items()})
        if per_k:
            res["fid_cond_mean"] = float(np.mean(list(per_k.values())))
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
                        "modality, unconditional and conditional per k", 70)]
