import torch

from shala_bench.data import polymnist_synth as ps
from shala_bench.data.cache import load_or_build


def test_dataset_is_deterministic_for_a_seed():
    a = ps.build(3, 0, 64, 8, 32)
    b = ps.build(3, 0, 64, 8, 32)
    c = ps.build(3, 1, 64, 8, 32)
    for split in a:
        assert torch.equal(a[split].labels, b[split].labels)
        for m in a[split].data:
            assert torch.equal(a[split].data[m], b[split].data[m])
    assert not torch.equal(a["train"].data["m0"], c["train"].data["m0"])


def test_train_and_test_handwriting_instances_are_disjoint():
    _, labels = ps._glyphs()
    pools = ps.instance_pools(labels, seed=0)
    for c in range(10):
        train, test = set(pools["train"][c].tolist()), set(pools["test"][c].tolist())
        assert train and test and not (train & test)
        assert all(int(labels[i]) == c for i in train | test)
    assert sum(len(p) for s in pools.values() for p in s) == len(labels)


def test_modalities_share_the_label_but_show_different_instances():
    glyphs, labels = ps._glyphs()
    pools = ps.instance_pools(labels, 0)
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(0))
    split = ps.make_split(glyphs, pools["train"], y, 4, seed=0, split_id=0)
    assert split.data["m0"].shape == (200, 3, 28, 28) and split.data["m0"].dtype == torch.uint8
    # recover the chosen instances from the construction's own order draw: every pair differs
    order_g = torch.Generator().manual_seed(0)
    for c in range(10):
        rows = (y == c).nonzero().squeeze(1)
        ranks = torch.rand(len(rows), len(pools["train"][c]), generator=order_g).argsort(1)[:, :4]
        chosen = pools["train"][c][ranks]
        assert all(len(set(r.tolist())) == 4 for r in chosen)
        assert all(int(labels[i]) == c for i in chosen.flatten())


def test_fewer_modalities_are_a_prefix_of_more():
    small, big = ps.build(2, 0, 40, 4, 20), ps.build(5, 0, 40, 4, 20)
    for split in small:
        assert torch.equal(small[split].labels, big[split].labels)
        for m in small[split].data:
            assert torch.equal(small[split].data[m], big[split].data[m])


def test_each_modality_has_its_own_background():
    s = ps.build(3, 0, 300, 4, 20)["train"]
    means = torch.stack([s.data[m].float().mean((0, 2, 3)) for m in ("m0", "m1", "m2")])  # (M, 3) colour
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 5.0


def test_arrow_cache_is_fixed_size_uint8_and_roundtrips(tmp_path):
    import datasets

    spec = ps.spec_for(2)
    built = ps.build(2, 0, 16, 4, 8)
    calls = []

    def build():
        calls.append(1)
        return built

    splits, folder = load_or_build(spec, {"k": 1}, build, tmp_path)
    splits2, _ = load_or_build(spec, {"k": 1}, build, tmp_path)
    assert len(calls) == 1  # the second call reads the cache
    ds = datasets.load_from_disk(str(folder / "arrow"))["train"]
    feat = ds.features["m0"]
    assert feat.length == 3 * 28 * 28 and feat.feature.dtype == "uint8"
    for split in built:
        assert torch.equal(splits2[split].data["m1"], built[split].data["m1"])
        assert torch.equal(splits2[split].labels, built[split].labels)


# ---------------------------------------------------------------- version 2 (polymnist-synth.version=2)
def test_v2_is_deterministic_for_a_seed_in_range_and_shaped_as_polymnist():
    a = ps.build(3, 0, 64, 8, 32, version=2)
    b = ps.build(3, 0, 64, 8, 32, version=2)
    c = ps.build(3, 1, 64, 8, 32, version=2)
    for split in a:
        assert torch.equal(a[split].labels, b[split].labels)
        for m in a[split].data:
            x = a[split].data[m]
            assert x.shape == (len(a[split]), 3, 28, 28) and x.dtype == torch.uint8  # [0, 1] once divided by 255
            assert torch.equal(x, b[split].data[m])
    assert not torch.equal(a["train"].data["m0"], c["train"].data["m0"])


def test_v2_keeps_v1s_labels_and_instances_and_changes_the_pixels():
    v1, v2 = ps.build(4, 0, 500, 8, 100, version=1), ps.build(4, 0, 500, 8, 100, version=2)
    for split in v1:
        assert torch.equal(v1[split].labels, v2[split].labels)  # the same (balanced) label draw
        assert not torch.equal(v1[split].data["m0"], v2[split].data["m0"])
    counts = torch.bincount(v2["train"].labels, minlength=10)
    assert counts.min() > 0.6 * counts.float().mean()


def test_v2_glyphs_fill_the_image_with_sharp_strokes():
    g1, _ = ps._glyphs(1)
    g2, _ = ps._glyphs(2)
    assert g2.shape == g1.shape == (len(g1), 28, 28) and 0 <= g2.min() and g2.max() <= 1
    assert g1[:, :4].max() == 0 and g2[:, :4].max() > 0  # v1 is padded to 20x20, v2 fills 28x28
    soft = lambda g: ((g > 0.05) & (g < 0.95)).float().sum() / (g > 0.05).float().sum()  # noqa: E731
    assert soft(g2) < soft(g1)  # fewer grey edge pixels per ink pixel


def test_v2_modalities_have_their_own_smooth_textures():
    s = ps.build(3, 0, 300, 4, 20, version=2)["train"]
    means = torch.stack([s.data[m].float().mean((0, 2, 3)) for m in ("m0", "m1", "m2")])  # (M, 3) colour
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 5.0
    t1, t2 = ps.texture(0, 0, 1), ps.texture(0, 0, 2)
    rough = lambda t: (t[:, :, 1:] - t[:, :, :-1]).abs().mean()  # noqa: E731  neighbouring-pixel change
    assert rough(t2) < 0.5 * rough(t1)  # no per-pixel colour noise


def test_the_version_is_a_checked_dataset_setting_and_part_of_the_cache_key(tmp_path):
    import pytest

    from shala_bench.errors import ProtocolError
    from shala_bench.protocol import make_protocol
    from shala_bench.registry import get_registry

    ds = get_registry().get_dataset("polymnist-synth")
    small = dict(n_modalities=2, n_train=16, n_val=4, n_test=8)
    p1 = make_protocol(ds, "smoke", {**small, "polymnist-synth.version": 1})
    p2 = make_protocol(ds, "smoke", small)
    assert p1.dataset_settings == {"version": 1} and p2.dataset_settings == {"version": 2} and p1.hash != p2.hash
    with pytest.raises(ProtocolError, match="polymnist-synth.version must be one of 1, 2, got 3"):
        make_protocol(ds, "smoke", {**small, "polymnist-synth.version": "3"})
    d1, d2 = ps.load(p1, tmp_path), ps.load(p2, tmp_path)
    assert d1.cache_path != d2.cache_path and d2.source["synth_version"] == 2
    assert torch.equal(d1.splits["train"].data["m0"], ps.build(2, 0, 16, 4, 8)["train"].data["m0"])
    assert torch.equal(d2.splits["train"].data["m0"], ps.build(2, 0, 16, 4, 8, version=2)["train"].data["m0"])
