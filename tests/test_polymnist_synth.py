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
