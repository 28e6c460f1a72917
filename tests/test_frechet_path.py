"""The one Fréchet path: FID and in-domain FD give the numbers the two old loops gave (to 1e-6)."""

import pytest
import torch

import frechet_v1
from evalctx import smoke_ctx  # noqa: F401 (fixture)
from shala_bench.metrics import fid, frechet
from test_fid import TINY


def _same(new: dict, old: dict):
    assert set(new) == set(old)
    for k, v in old.items():
        if isinstance(v, float):
            assert new[k] == pytest.approx(v, rel=1e-6, abs=1e-6), k
        else:
            assert new[k] == v, k


def test_fid_of_the_shared_path_equals_the_old_fid_loop(smoke_ctx):
    ctx = smoke_ctx(fid_n=32, frechet_cond_subsets=1)  # 32: the tiny-extractor stats test_fid counts
    ex = fid.make_extractor(TINY)
    torch.manual_seed(3)
    new = fid.compute_fid(ctx, ex)
    torch.manual_seed(3)  # the same prior draws and generations
    old = frechet_v1.compute_fid(ctx, ex)
    _same(new, old)
    assert {"fid_joint_m0", "fid_cond_k1", "fid_cond_k2", "fid_cond_mean"} <= set(new)


def test_in_domain_fd_of_the_shared_path_equals_the_old_fd_loop(smoke_ctx):
    ctx = smoke_ctx()
    ctx.classifiers  # trained or loaded before the seeding below, for both calls alike
    torch.manual_seed(5)
    new = frechet.in_domain_frechet(ctx)
    torch.manual_seed(5)
    old = frechet_v1.in_domain_frechet(ctx)
    _same(new, old)
    assert new["fd_cond_mean"] > 0 and len([k for k in new if k.startswith("fd_joint_")]) == 3


def test_in_domain_fd_caches_real_statistics_keyed_by_the_classifier_weights(smoke_ctx):
    ctx = smoke_ctx()
    space = frechet.classifier_space(ctx)
    first = frechet.real_statistics(ctx, space, "m0", 32)
    root = frechet.default_cache_dir() if ctx.cache_dir is None else ctx.cache_dir
    files = sorted((root / "fid_stats").glob(f"*-test-m0-{frechet.EXTRACTOR}-*.npz"))
    assert files and space.identity("m0") != space.identity("m1")
    again = frechet.real_statistics(ctx, space, "m0", 32)
    assert (again["mu"] == first["mu"]).all() and (again["sigma"] == first["sigma"]).all()
    # other weights: another identity, so another cache entry (never stale statistics)
    clf = ctx.classifiers["m0"][0]
    before = space.identity("m0")
    with torch.no_grad():
        clf.head.bias.add_(1.0)
    try:
        assert space.identity("m0") != before
    finally:
        with torch.no_grad():
            clf.head.bias.sub_(1.0)


def test_fid_and_fd_modules_do_not_import_each_other():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(frechet))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "shala_bench.metrics.fid" not in modules and "fid" not in names
