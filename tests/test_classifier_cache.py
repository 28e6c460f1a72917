"""The per-modality classifiers are cached by the content of the data they learn from."""
import torch

from shala_bench.data import polymnist_synth as ps
from shala_bench.data.spec import LoadedDataset
from shala_bench.metrics import classifiers as C
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry


def loaded(M: int, seed: int = 0, n_train: int = 40) -> LoadedDataset:
    splits = ps.build(M, seed, n_train, 4, 20)
    return LoadedDataset(ps.spec_for(M), splits, {"source": "test"}, "")


def protocol():
    return make_protocol(get_registry().get_dataset(ps.NAME), "smoke", {"classifier_epochs": 1})


def test_key_follows_the_data_not_the_number_of_modalities():
    p = protocol()
    two, five = loaded(2), loaded(5)
    # polymnist-synth's M=2 data is a prefix of its M=5 data: modality m gets the same judge at every M
    assert C.classifier_key(p, two, "m1") == C.classifier_key(p, five, "m1")
    assert C.classifier_key(p, two, "m0") != C.classifier_key(p, two, "m1")
    assert C.classifier_key(p, two, "m0") != C.classifier_key(p, loaded(2, seed=1), "m0")
    assert C.classifier_key(p, two, "m0") != C.classifier_key(p, loaded(2, n_train=41), "m0")


def test_one_changed_pixel_or_label_changes_the_fingerprint():
    d = loaded(2)
    base = C.data_fingerprint(d, "m0")
    d.splits["test"].data["m0"][3, 0, 5, 5] ^= 1
    assert C.data_fingerprint(d, "m0") != base
    d.splits["test"].data["m0"][3, 0, 5, 5] ^= 1
    assert C.data_fingerprint(d, "m0") == base
    d.splits["train"].labels[0] = (d.splits["train"].labels[0] + 1) % 10
    assert C.data_fingerprint(d, "m0") != base


def test_a_classifier_trained_at_one_m_is_reused_at_another(tmp_path, monkeypatch):
    trained = []
    real = C._train_one

    def counting(spec, data, p, device):
        trained.append(spec.name)
        return real(spec, data, p, device)

    monkeypatch.setattr(C, "_train_one", counting)
    p = protocol()
    first = C.get_classifiers(loaded(3), p, cache_dir=tmp_path)
    assert trained == ["m0", "m1", "m2"]
    again = C.get_classifiers(loaded(2), p, cache_dir=tmp_path)
    assert trained == ["m0", "m1", "m2"]  # nothing retrained
    for m in ("m0", "m1"):
        a, b = first[m][0].state_dict(), again[m][0].state_dict()
        assert first[m][1] == again[m][1] and all(torch.equal(a[k], b[k]) for k in a)


def test_loading_cached_classifiers_leaves_the_callers_random_stream_alone(tmp_path):
    p, d = protocol(), loaded(2)
    C.get_classifiers(d, p, cache_dir=tmp_path)  # trains and caches
    torch.manual_seed(7)
    C.get_classifiers(d, p, cache_dir=tmp_path)  # loads: builds the modules, then replaces their weights
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))
