"""A stage two models train identically (ShaLa's joint stage 1, shared by shala-cond and shala-post) is trained
once per results folder and reused: the reusing run ends bit-identical to one that trained the stage itself."""

from __future__ import annotations

import json

import pytest

import pandas as pd
import torch

from conftest import build_model, smoke_spec
from shala_bench.launch import STAGE_CACHE, run_one
from shala_bench.trainer import BEST, Preempted, StageCache, Trainer, load_checkpoint
from toytrain import stop_before


def test_only_the_joint_variants_share_a_key():
    """shala-cond, shala-post and `shala` (shala-cond at another guidance scale): one key for stage 1; shala-fused
    (modality dropout) and the prior stages: apart."""
    keys = {}
    for name in ("shala-cond", "shala-post", "shala-fused", "shala"):
        model = build_model(name)
        keys[name] = {s: model.stage_share_key(s) for s in model.stages}
    assert keys["shala-cond"]["vae"] is not None and keys["shala-cond"]["vae"] == keys["shala-post"]["vae"] == keys["shala"]["vae"]
    assert keys["shala-fused"]["vae"] != keys["shala-cond"]["vae"]
    assert all(k["prior"] is None for k in keys.values())
    assert build_model("mmvae").stage_share_key("vae") is None
    # the key the trainer files it under also holds the seed and the recipe
    model = build_model("shala-cond")
    split = type("S", (), {"__len__": lambda self: 100})()
    a, b = (Trainer(model, model.protocol, split, "x", seed=s, progress=False, stage_cache="c").share_key(0, "vae")
            for s in (0, 1))
    assert a and b and a != b


def _record(results, model):
    path, = (results / "polymnist-synth" / model).glob("*/record.json")
    return json.loads(path.read_text()), path.parent


def test_a_reused_stage_one_gives_the_run_it_would_have_trained(tmp_path):
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    run_one(smoke_spec("shala-cond", alone, share_stages=False))
    assert not (alone / STAGE_CACHE).exists()
    post = run_one(smoke_spec("shala-post", shared))
    assert len(list((shared / STAGE_CACHE).glob("*.pt"))) == 1  # its stage 1, filed for the other variant
    run_one(smoke_spec("shala-cond", shared))

    (a, dir_a), (b, dir_b) = _record(alone, "shala-cond"), _record(shared, "shala-cond")
    assert a["status"] == b["status"] == "ok"
    assert b["stages"]["vae"]["reused_from"] == post.run_id and "reused_from" not in a["stages"]["vae"]
    assert b["metrics"] == a["metrics"]  # every metric, bit for bit
    wa, wb = (load_checkpoint(d / BEST)["model"] for d in (dir_a, dir_b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    drop = {"seconds", "val_seconds", "reused_from"}
    for stage in ("vae", "prior"):
        assert ({k: v for k, v in a["stages"][stage].items() if k not in drop}
                == {k: v for k, v in b["stages"][stage].items() if k not in drop})
    # the replayed curve is stage 1's as it trained (its timings are the run that trained it)
    ca, cb = (pd.read_csv(d / "curves.csv").drop(columns="samples_per_s") for d in (dir_a, dir_b))
    pd.testing.assert_frame_equal(ca, cb)
    # its cost: in the cell's training time as it would be alone, and said to be reused
    assert b["timings"]["reused_s"] == round(b["timings"]["train_vae_s"], 3) > 0
    assert a["timings"]["reused_s"] == 0


def test_an_unreadable_or_misfitting_entry_is_a_miss(tmp_path):
    cache = StageCache(tmp_path)
    cache.path("k").write_bytes(b"not a checkpoint")
    assert cache.get("k") is None
    cache.put("k", {"run": "r"})  # readable, but not an entry
    assert cache.get("k") is None


def _post_stage_one(prep, data, run_dir, cache, stop_at=None, resume=False):
    """shala-post's stage 1 alone, filed in `cache`; stopped (a preemption) before step `stop_at` if given."""
    torch.manual_seed(0)
    model = prep.model_entry.build(data.spec, prep.protocol, prep.config)
    model.stages = ("vae",)
    trainer = Trainer(model, prep.protocol, data.splits["train"], run_dir, seed=0, progress=False, stage_cache=cache)
    if stop_at is not None:
        stop_before(trainer, model, stop_at)
    trainer.fit(resume=resume)
    return trainer


def test_a_stage_resumed_mid_way_files_the_entry_an_uninterrupted_one_does(results):
    from shala_bench.launch import prepare



    prep = prepare(smoke_spec("shala-post", results))
    data = prep.dataset_entry.loader(prep.protocol, None)
    straight = _post_stage_one(prep, data, results / "straight", results / "c1")
    with pytest.raises(Preempted):
        _post_stage_one(prep, data, results / "split", results / "c2", stop_at=prep.protocol.log_every + 1)
    assert not list((results / "c2").glob("*.pt"))  # nothing filed before the stage ends
    _post_stage_one(prep, data, results / "split", results / "c2", resume=True)
    key = straight.share_key(0, "vae")
    a, b = StageCache(results / "c1").get(key), StageCache(results / "c2").get(key)
    assert a["weights"].keys() == b["weights"].keys() and all(torch.equal(a["weights"][k], b["weights"][k])
                                                                for k in a["weights"])
    assert all(torch.equal(x, y) for x, y in zip(a["rng"].values(), b["rng"].values()))
    rows = [[(h, {k: v for k, v in r.items() if k != "samples_per_s"}) for h, r in e["rows"]] for e in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) > 1
