"""The golden record: code that changes the numbers of a smoke cell must bump NUMBERS_VERSION (and refresh
tests/golden/smoke.json with `python tests/golden/update.py`), so one protocol hash always means one set of
numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import golden  # noqa: E402

from shala_bench.protocol import NUMBERS_VERSION  # noqa: E402

FIX = ("bump NUMBERS_VERSION in shala_bench/protocol.py and run `python tests/golden/update.py` in the same "
       "commit (or undo the change)")


def test_golden_record_is_for_this_numbers_version_and_every_builtin_model():
    doc = golden.load()
    assert doc["numbers_version"] == NUMBERS_VERSION, (
        f"tests/golden/smoke.json is for numbers_version {doc['numbers_version']}, the code is at {NUMBERS_VERSION}: "
        "run `python tests/golden/update.py`")
    assert sorted(doc["models"]) == golden.builtin_models(), "run `python tests/golden/update.py`"


@pytest.fixture(scope="module")
def golden_cache(tmp_path_factory):
    # its own cache, as update.py: classifiers cached by other tests may come from another thread count
    return str(tmp_path_factory.mktemp("golden-cache"))


@pytest.mark.parametrize("model", golden.builtin_models())
def test_smoke_metrics_match_the_golden_record(model, golden_cache):
    doc = golden.load()
    if doc["numbers_version"] != NUMBERS_VERSION or model not in doc["models"]:
        pytest.fail("the golden record is stale: run `python tests/golden/update.py`")
    diff = golden.differences(doc["models"][model], golden.smoke_metrics(model, golden_cache))
    assert not diff, (f"{model}: the numbers changed under numbers_version {NUMBERS_VERSION} "
                      f"(tolerance {golden.ABS_TOL} + {golden.REL_TOL} x |golden|): " + "; ".join(diff[:6]) + f". {FIX}")


def test_a_change_beyond_the_tolerance_is_reported_by_name():
    g = {"test_nll": -1000.0, "fd_mean": 0.012, "coherence_joint": 0.5}
    assert golden.differences(g, dict(g, test_nll=-1000.5)) == []  # 5e-4 relative: inside
    assert golden.differences(g, dict(g, fd_mean=0.0121)) == ["fd_mean: golden 0.012, now 0.0121"]
    assert golden.differences(g, {"test_nll": -1000.0, "fd_mean": 0.012}) == ["coherence_joint: golden 0.5, now missing"]
    # a probe accuracy over 64 test tuples may move by one tuple (another CPU's kernels), not by two
    p = {"probe_n_test": 64.0, "probe_m1": 0.34375, "coherence_joint": 0.34375}
    assert golden.differences(p, dict(p, probe_m1=0.34375 + 1 / 64)) == []
    assert golden.differences(p, dict(p, probe_m1=0.34375 + 2 / 64)) == ["probe_m1: golden 0.34375, now 0.375"]
    assert golden.differences(p, dict(p, coherence_joint=0.34375 + 1 / 64)) == ["coherence_joint: golden 0.34375, now 0.359375"]
