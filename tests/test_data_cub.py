"""CUB-200-2011 + Reed et al. captions from the official files: crops, (image, caption) pairs, cache, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shala_bench.data import cub
from shala_bench.errors import DataError
from shala_bench.protocol import make_protocol
from shala_bench.registry import get_registry

COLOURS = ["red", "blue", "yellow", "green"]


def level(image_id: int) -> int:
    """Grey level of the bird box of image `image_id` (1-based): unique per image."""
    return 20 + 15 * image_id


def make_cub(root: Path) -> Path:
    """4 classes x 3 images (2 train, 1 test), 100x80 images with a bird box, 10 captions each."""
    from PIL import Image

    birds = root / "CUB_200_2011"
    (birds / "images").mkdir(parents=True)
    images, labels, split, classes, boxes = [], [], [], [], []
    k = 0
    for c, colour in enumerate(COLOURS, 1):
        cname = f"{c:03d}.{colour.title()}_Bird"
        classes.append(f"{c} {cname}")
        for j in range(3):
            k += 1
            rel = f"{cname}/{colour.title()}_Bird_{j:04d}_{k}.jpg"
            img = np.zeros((80, 100, 3), np.uint8)
            img[10:40, 20:60] = level(k)  # the box: x=20, y=10, w=40, h=30
            (birds / "images" / cname).mkdir(exist_ok=True)
            Image.fromarray(img).save(birds / "images" / rel, quality=95)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
            split.append(f"{k} {1 if j < 2 else 0}")
            boxes.append(f"{k} 20.0 10.0 40.0 30.0")
            txt = root / "text_c10" / Path(rel).with_suffix(".txt")
            txt.parent.mkdir(parents=True, exist_ok=True)
            rare = " speckled" if k == 1 else ""  # a word of one caption only
            txt.write_text("".join(f"this bird is {colour} with a {size} beak number {n}{rare if n == 0 else ''}\n"
                                   for n, size in enumerate(["short", "long"] * 5)))
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels),
                       ("train_test_split.txt", split), ("classes.txt", classes), ("bounding_boxes.txt", boxes)):
        (birds / name).write_text("\n".join(rows) + "\n")
    return root


def smoke_protocol(**overrides):
    return make_protocol(get_registry().get_dataset("cub"), "smoke", overrides)


def test_vocabulary_orders_by_count_then_word_and_encodes_to_a_fixed_length():
    from shala_bench.data.text import EOS, PAD, UNK, Vocabulary, tokenize

    assert tokenize("A bird's wing, 12 cm!") == ["a", "bird's", "wing", ",", "12", "cm", "!"]
    vocab = Vocabulary.build(["b a c", "a b", "a"], min_count=2)
    assert vocab.words == ("<pad>", "<unk>", "<eos>", "a", "b")  # a: 3, b: 2, c: 1 (dropped)
    assert vocab.encode("a c b", 5).tolist() == [3, UNK, 4, EOS, PAD]
    assert vocab.encode("a b a b a b", 4).tolist() == [3, 4, 3, EOS]  # L - 1 tokens, then <eos>
    assert vocab.decode([3, UNK, 4, EOS, 3]) == "a <unk> b"
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_crop_is_a_square_of_one_and_a_half_times_the_box_clipped_to_the_image():
    assert cub.crop_box(100, 80, [20.0, 10.0, 40.0, 30.0]) == (10, 0, 70, 55)  # r = 30 around (40, 25)
    assert cub.crop_box(100, 80, None) == (10, 0, 90, 80)


def test_each_image_caption_pair_is_a_sample_and_val_images_are_not_in_train(tmp_path):
    root = make_cub(tmp_path / "src")
    cache = tmp_path / "cache"
    report = cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert report["splits"] == {"train": 8, "test": 4}
    data = cub.DATASET.load(smoke_protocol(n_val=10), cache)
    sp = data.splits
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (70, 10, 40)
    assert data.spec.names == ["image", "caption"] and data.spec.class_names[1] == "002.Blue_Bird" and data.spec.n_classes == 4
    vocab = cub.DATASET.vocabulary
    # words of >= 3 training captions only: 'number' is (80 times), 'speckled' is not (once)
    assert "number" in vocab.words and "speckled" not in vocab.words
    assert data.spec.modality("caption").vocab_size == vocab.size == 3 + 7 + 2 + 4 + 10  # specials, words, sizes, colours, digits
    ids = {}
    for name, split in sp.items():
        box_level = split.data["image"][:, :, 28:36, 28:36].float().mean(dim=(1, 2, 3))  # inside the bird box
        ids[name] = ((box_level - 20) / 15).round().long()  # back to the image id
        assert torch.allclose(box_level, 20 + 15 * ids[name].float(), atol=3)
        assert torch.equal(split.labels, (ids[name] - 1) // 3)
        for cap, y in zip(split.data["caption"], split.labels):
            assert vocab.decode(cap.tolist()).startswith(f"this bird is {COLOURS[y]} with a ")
    train_ids, val_ids = set(ids["train"].tolist()), set(ids["val"].tolist())
    assert len(val_ids) == 1 and len(train_ids) == 7 and not val_ids & train_ids
    assert set(ids["test"].tolist()) == {3, 6, 9, 12}
    # every caption of every training image appears once
    assert len({(i, tuple(c.tolist())) for i, c in zip(ids["train"].tolist(), sp["train"].data["caption"])}) == 70


def test_text_backbone_gives_categorical_logits_and_classifier_reads_them_as_tokens():
    from shala_bench.backbones import make_backbones
    from shala_bench.contract import MultimodalVAE
    from shala_bench.data.spec import DatasetSpec, ModalitySpec
    from shala_bench.metrics.classifiers import classifier_input, make_classifier

    spec = ModalitySpec("caption", "text", (32,), "categorical", 50)
    enc, dec = make_backbones(spec, 16)
    ids = torch.randint(0, 50, (3, 32))
    mu, _ = enc(ids.float())  # batches reach encoders as floats
    logits = dec(torch.randn(2, 3, 16))
    assert mu.shape == (3, 16) and logits.shape == (2, 3, 32, 50)
    # the categorical log-likelihood sums log-softmax at the true ids over the L tokens
    vae = MultimodalVAE(DatasetSpec("t", (spec,), 2), make_protocol(get_registry().get_dataset("cub"), "smoke"))
    ll = vae.log_likelihood("caption", ids, logits)
    expected = logits.log_softmax(-1).gather(-1, ids.expand(2, 3, 32).unsqueeze(-1)).squeeze(-1).sum(-1)
    assert ll.shape == (2, 3) and torch.allclose(ll, expected)
    clf = make_classifier(spec, 4)
    as_ids = classifier_input(spec, logits[0])
    assert torch.equal(as_ids, logits[0].argmax(-1)) and torch.allclose(clf(logits[0]), clf(as_ids.float()))
    image = ModalitySpec("image", "image", (3, 64, 64))
    e64, d64 = make_backbones(image, 16)
    assert e64(torch.rand(2, 3, 64, 64))[0].shape == (2, 16) and d64(torch.randn(2, 16)).shape == (2, 3, 64, 64)
    assert torch.equal(classifier_input(image, torch.tensor([-1.0, 0.5, 2.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_prepare_then_smoke_training_and_evaluation_end_to_end(tmp_path, results):
    from conftest import smoke_spec
    from shala_bench.launch import run_one

    root = make_cub(tmp_path / "src")
    cache = tmp_path / "cache"
    cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    rec = run_one(smoke_spec("mvae", results, dataset="cub", cache_dir=str(cache), overrides={"n_val": 10, "max_train_samples": 24}))
    assert rec.ok, rec.status
    assert 0.0 <= rec.metrics["coherence_cond_k1"] <= 1.0 and 0.0 <= rec.metrics["coherence_joint"] <= 1.0


def test_missing_caption_file_is_one_line_error_naming_it_and_leaves_no_cache(tmp_path):
    root = make_cub(tmp_path / "src")
    gone = next((root / "text_c10").rglob("*_5.txt"))
    gone.unlink()
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert str(gone) in str(e.value) and "missing caption file" in str(e.value) and "\n" not in str(e.value)
    assert not [p for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")]
    assert not (cache / "prepared" / "cub.json").exists()


def test_malformed_table_line_is_named(tmp_path):
    root = make_cub(tmp_path / "src")
    (root / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\n2\n")
    with pytest.raises(DataError, match=r"train_test_split.txt: line 2 is '2'"):
        cub.DATASET.prepare(root, smoke_protocol(), tmp_path / "cache", progress=False)


def test_preparing_twice_reuses_the_cache_and_a_changed_caption_or_converter_rebuilds_it(tmp_path, monkeypatch):
    root = make_cub(tmp_path / "src")
    cache = tmp_path / "cache"
    first = cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    again = cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert first["built"] and not again["built"] and first["cache"] == again["cache"]
    cap = next((root / "text_c10").rglob("*_1.txt"))
    cap.write_text("a small red bird\n" * 10)
    changed = cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert changed["built"] and changed["cache"] != first["cache"]
    assert "small" in cub.DATASET.vocabulary.words  # the vocabulary follows the rebuilt cache
    monkeypatch.setattr(cub.DATASET, "converter_version", cub.DATASET.converter_version + 1)
    bumped = cub.DATASET.prepare(root, smoke_protocol(), cache, progress=False)
    assert bumped["built"] and bumped["cache"] not in (first["cache"], changed["cache"])
