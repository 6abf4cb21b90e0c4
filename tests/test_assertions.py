"""A failing domain assertion points at the case's own line, not into the harness (as pytest-regressions'
helpers do), and its message carries the curve."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CASE = """
from types import SimpleNamespace

from harness.runner.assertions import assert_collapses_within


def test_case():
    analysis = SimpleNamespace(search=SimpleNamespace(k2=None), label="m / lm.down_proj / circle",
                               table=lambda: "the curve's table")
    assert_collapses_within(analysis, 4)  # the line a failure must point at
"""


def test_a_failing_assertion_points_at_the_case(pytester: pytest.Pytester):
    pytester.makepyfile(test_case=CASE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tb=long")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "assert_collapses_within(analysis, 4)  # the line a failure must point at" in output
    assert "expected complete collapse by k=4, found no collapse" in output and "the curve's table" in output
    assert "harness/runner/assertions.py" not in output and "def _fail_analysis" not in output
