"""The xdist scheduler's grouping keys: the registered model, or the curve, a collapse case belongs to."""

import dataclasses

import pytest

from harness.models import registry
from harness.plugin.scheduling import CollapseCaseScheduling, curve_of_case, model_of_case

pytest_plugins = ["pytester"]


@pytest.fixture
def extra_model(monkeypatch):
    """Register `llava` (a prefix of `llava-1.5-7b`) on a copy of the registry, restored afterwards."""
    registry.registered_models()  # built-ins first: registered into the copy they would be lost afterwards
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model(dataclasses.replace(registry.get_model_spec("llava-1.5-7b"), name="llava"))


@pytest.mark.parametrize(
    ("nodeid", "model"),
    [
        ("cases/test_collapse.py::test_collapse[tiny-llava-lm.down_proj-circle-k4]", "tiny-llava"),
        ("cases/test_collapse.py::test_collapse[llava-1.5-7b-lm.gate_proj-car-k0]", "llava-1.5-7b"),
        ("cases/test_collapse.py::test_collapse[llava-lm.gate_proj-car-k0]", "llava"),
        ("tests/test_x.py::test_y[tiny-llava]", None),  # no '-' after the name: not a collapse case id
        ("tests/test_x.py::test_y", None),
    ],
)
def test_model_is_read_from_the_case_id_longest_name_first(extra_model, nodeid, model):
    assert model_of_case(nodeid) == model


CASE = "cases/test_collapse.py::test_collapse"


@pytest.mark.parametrize(
    ("nodeid", "model", "curve"),
    [
        (f"{CASE}[tiny-llava-lm.down_proj-circle-k4]", "tiny-llava", "tiny-llava-lm.down_proj-circle"),
        (f"{CASE}[tiny-llava-lm.down_proj-circle-k4]@tiny-llava", "tiny-llava", "tiny-llava-lm.down_proj-circle"),
        (f"{CASE}[llava-1.5-7b-lm.gate_proj-car-k128]", "llava-1.5-7b", "llava-1.5-7b-lm.gate_proj-car"),
        (
            f"{CASE}[llava-1.5-7b-lm.gate_proj-car-k0]@llava-1.5-7b",
            "llava-1.5-7b",
            "llava-1.5-7b-lm.gate_proj-car",
        ),
        (f"{CASE}[tiny-llava-lm.up_proj-blue-k9-k16]@g", "tiny-llava", "tiny-llava-lm.up_proj-blue-k9"),
        ("tests/test_x.py::test_y[tiny-llava]@tiny-llava", None, None),
        ("tests/test_x.py::test_y@group", None, None),
        ("tests/test_x.py::test_y[tiny-llava-x]-suffix", None, None),
    ],
    ids=["case", "case@group", "k128", "k0@group", "category-like-k", "not-a-case@group", "plain@group", "no-end"],
)
def test_model_and_curve_of_a_case_with_or_without_the_group_suffix(nodeid, model, curve):
    """xdist may append `@group` to a node id: the model and the curve (the id without its final `-k<k>`) are
    read the same way with or without it; other tests have neither."""
    assert model_of_case(nodeid) == model
    assert curve_of_case(nodeid) == curve


def test_scheduler_work_units_are_models_or_curves(pytester):
    """by="model" puts every case of a model in one unit, by="curve" every case of a (model, site, category);
    any other test is a unit of its own."""
    config = pytester.parseconfigure("--tx", "2*popen", "-p", "no:cacheprovider")
    ids = [
        f"{CASE}[tiny-llava-lm.down_proj-circle-k0]",
        f"{CASE}[tiny-llava-lm.down_proj-circle-k4]@tiny-llava",
        f"{CASE}[tiny-llava-lm.down_proj-square-k1]",
        f"{CASE}[llava-1.5-7b-lm.down_proj-circle-k1]",
        "tests/test_other.py::test_a",
        "tests/test_other.py::test_b",
    ]
    by_model = CollapseCaseScheduling(config, by="model")
    by_curve = CollapseCaseScheduling(config, by="curve")
    assert [by_model._split_scope(nodeid) for nodeid in ids] == [
        "collapse:tiny-llava",
        "collapse:tiny-llava",
        "collapse:tiny-llava",
        "collapse:llava-1.5-7b",
        "tests/test_other.py::test_a",
        "tests/test_other.py::test_b",
    ]
    assert [by_curve._split_scope(nodeid) for nodeid in ids] == [
        "collapse:tiny-llava-lm.down_proj-circle",
        "collapse:tiny-llava-lm.down_proj-circle",
        "collapse:tiny-llava-lm.down_proj-square",
        "collapse:llava-1.5-7b-lm.down_proj-circle",
        "tests/test_other.py::test_a",
        "tests/test_other.py::test_b",
    ]
