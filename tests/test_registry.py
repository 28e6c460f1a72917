import pytest

from shala_bench.errors import UnknownNameError
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import ModelEntry, Registry, get_registry


def test_builtins_come_through_the_entry_point_group():
    reg = get_registry()
    assert reg.models["mvae"].source.startswith("shala-bench ")
    assert reg.datasets["polymnist-synth"].source.startswith("shala-bench ")
    assert "coherence_joint" in reg.metrics


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match=r"did you mean mvae[,?]"):
        get_registry().get_model("mave")


def test_duplicate_names_are_rejected():
    class A:
        @hookimpl
        def shala_bench_register_models(self):
            return [ModelEntry("mvae", object, "dup")]

    reg = Registry(plugins=[A()])
    with pytest.raises(UnknownNameError, match="registered twice"):
        reg.models


def test_list_filters_with_wildcards():
    assert list(get_registry().list("models", "mv*")) == ["mvae"]
    assert not get_registry().list("models", "zzz*")
