import hashlib

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from evalctx import smoke_ctx  # noqa: F401 (fixture)
from shala_bench.metrics import fid
from shala_bench.metrics.frechet import frechet_distance, gaussian_statistics

TINY = "shala-bench-test-tiny"


class TinyExtractor(FeatureExtractorBase):
    """A fixed random projection of 4x4-pooled pixels: 16-d features, uint8 input as Inception's."""

    calls = 0

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Linear(3 * 4 * 4, 16)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(16, 48, generator=g))
            self.proj.bias.zero_()

    @staticmethod
    def get_provided_features_list():
        return ("16",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "16"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        TinyExtractor.calls += 1
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        return (self.proj(pooled),)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(TINY, TinyExtractor)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """torch hub (where torch-fidelity caches its weights) pointed at an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(fid.ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def assert_unavailable_with_hint(res: dict, capsys, *expected):
    assert set(res) == {"fid_unavailable"}
    msg = res["fid_unavailable"]
    assert isinstance(msg, str) and "\n" not in msg
    assert "--inception-weights" in msg and fid.ENV in msg and fid.INCEPTION_FILES[0] in msg
    for part in expected:
        assert part in msg
    assert msg in capsys.readouterr().err


def test_missing_inception_file_is_recorded_unavailable_with_where_to_put_it(smoke_ctx, empty_hub, capsys):
    res = fid.inception_fid(smoke_ctx(fid_n=8))
    assert_unavailable_with_hint(res, capsys, "not found", str(empty_hub))


def test_wrong_hash_inception_file_in_the_hub_cache_is_unavailable(smoke_ctx, empty_hub, capsys):
    empty_hub.mkdir(parents=True)
    (empty_hub / fid.INCEPTION_FILES[0]).write_bytes(b"not the published weights")
    res = fid.inception_fid(smoke_ctx(fid_n=8))
    assert_unavailable_with_hint(res, capsys, "sha256", fid.INCEPTION_SHA256[:16])


def test_wrong_or_missing_explicit_inception_path_is_unavailable(smoke_ctx, empty_hub, tmp_path, capsys):
    bad = tmp_path / "inception.pth"
    bad.write_bytes(b"junk")
    res = fid.inception_fid(smoke_ctx(fid_n=8, options={"inception_weights": str(bad)}))
    assert_unavailable_with_hint(res, capsys, str(bad), "sha256")
    missing = tmp_path / "nowhere.pth"
    res = fid.inception_fid(smoke_ctx(fid_n=8, options={"inception_weights": str(missing)}))
    assert_unavailable_with_hint(res, capsys, str(missing), "not found")


def test_env_variable_names_the_weights_file(empty_hub, tmp_path, monkeypatch):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    monkeypatch.setenv(fid.ENV, str(f))
    path, why = fid.find_inception_weights()
    assert path is None and str(f) in why and fid.ENV in why
    # the hash check accepts exactly the file whose sha256 is the published one
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(b"weights").hexdigest())
    assert fid.find_inception_weights() == (f, None)


def test_fid_off_when_fid_n_is_zero_says_so(smoke_ctx, empty_hub):
    assert fid.inception_fid(smoke_ctx(fid_n=0)) == {"fid_unavailable": "fid_n = 0 in this protocol: Inception FID is off"}


def test_no_download_refuses_every_url_loader_and_restores_them():
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    original = inc.load_state_dict_from_url
    with fid.no_download():
        for loader in (inc.load_state_dict_from_url, torch.hub.load_state_dict_from_url,
                       torch.hub.download_url_to_file):
            with pytest.raises(RuntimeError, match="never downloads"):
                loader("https://example.invalid/weights.pth", "/tmp/x")
    assert inc.load_state_dict_from_url is original


def test_inception_extractor_without_a_file_refuses_to_download():
    with pytest.raises(RuntimeError, match="never downloads"):
        fid.make_extractor(fid.INCEPTION)


def test_fid_plumbing_with_a_tiny_torch_fidelity_extractor(smoke_ctx):
    n = 32
    ctx = smoke_ctx(fid_n=n, frechet_cond_subsets=1)
    ex = fid.make_extractor(TINY)
    assert ex.layer == "16" and len(ex.identity) == 16
    res = fid.compute_fid(ctx, ex)
    mods = ctx.model.modalities
    assert res["fid_n"] == n and res["fid_extractor"] == f"{TINY}/16" and res["fid_extractor_hash"] == ex.identity
    assert "fid_note" in res  # fewer than the paper's 10,000 samples is flagged
    for key in [f"fid_joint_{m}" for m in mods] + ["fid_mean", "fid_cond_k1", "fid_cond_k2", "fid_cond_mean"]:
        assert np.isfinite(res[key]) and res[key] > 0, key

    # real statistics are cached per (dataset, split, modality, extractor) and match the direct computation
    cached = sorted((ctx.cache_dir or fid.default_cache_dir()).joinpath("fid_stats").glob(f"*-test-*-{TINY}-*.npz"))
    assert len(cached) == len(mods)
    real = ex(ctx.data.splits["test"].data["m0"][:n])
    with np.load([c for c in cached if "-test-m0-" in c.name][0]) as f:
        np.testing.assert_allclose(f["mu"], real.numpy().mean(0), rtol=1e-10)
        np.testing.assert_allclose(f["sigma"], np.cov(real.numpy(), rowvar=False), rtol=1e-8)
    # the unconditional value is the Frechet distance of the sample features to those statistics
    torch.manual_seed(7)  # the same prior draw in both
    again = fid.compute_fid(ctx, ex)
    torch.manual_seed(7)
    fake = ex(fid.to_uint8(ctx.model.sample(n)["m0"]))
    direct = frechet_distance(gaussian_statistics(fake), gaussian_statistics(real))
    assert again["fid_joint_m0"] == pytest.approx(direct)

    # a second evaluation reuses the cache: no extractor pass over the real images
    TinyExtractor.calls = 0
    fid.compute_fid(ctx, ex)
    batches_per_set = -(-n // fid.BATCH)
    n_fake_sets = len(mods) + sum(len(ctx.model.modalities) - k for k in (1, 2))  # joint + one subset per k
    assert TinyExtractor.calls == n_fake_sets * batches_per_set


def test_fid_is_zero_for_a_model_that_returns_the_test_images(smoke_ctx):
    ctx = smoke_ctx(oracle=True, fid_n=32)
    res = fid.compute_fid(ctx, fid.make_extractor(TINY))
    for key in ("fid_joint_m0", "fid_joint_m1", "fid_joint_m2", "fid_cond_k1", "fid_cond_k2"):
        assert res[key] == pytest.approx(0.0, abs=1e-6), key
