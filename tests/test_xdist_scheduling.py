"""The xdist scheduler's grouping key: the registered model a collapse case belongs to."""

import dataclasses

import pytest

from harness import registry
from harness.xdist_scheduling import model_of_case


@pytest.fixture
def extra_model(monkeypatch):
    """Register `llava` (a prefix of `llava-1.5-7b`) on a copy of the registry, restored afterwards."""
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
