"""Threshold search: on monotone curves the adaptive search finds the linear scan's k₁ and k₂ in logarithmically
many evaluations; on any curve it reports what it saw, recoveries included."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from harness.threshold_search import adaptive_search, linear_search


def step_curve(k1: int | None, k2: int | None):
    """Stage 0 below k1, 1 from k1, 2 from k2 (None: never)."""

    def stage_at(k: int) -> int:
        if k2 is not None and k >= k2:
            return 2
        return int(k1 is not None and k >= k1)

    return stage_at


def counted(stage_at):
    calls: list[int] = []

    def wrapper(k: int) -> int:
        calls.append(k)
        return stage_at(k)

    return wrapper, calls


@st.composite
def monotone_curves(draw):
    k_max = draw(st.integers(1, 20_000))
    k2 = draw(st.one_of(st.none(), st.integers(1, k_max)))
    k1 = draw(st.one_of(st.none(), st.integers(1, k2 if k2 is not None else k_max)))
    if k2 is not None and k1 is None:
        k1 = k2  # stage 2 implies stage ≥ 1: the first collapse is also the first degradation
    return k1, k2, k_max


def log2_ceil(k: int) -> int:
    return math.ceil(math.log2(k)) if k > 1 else 0


@given(monotone_curves())
def test_adaptive_finds_the_linear_thresholds_on_monotone_curves(curve):
    k1, k2, k_max = curve
    adaptive = adaptive_search(step_curve(k1, k2), k_max)
    linear = linear_search(step_curve(k1, k2), k_max)
    assert (adaptive.k1, adaptive.k2) == (linear.k1, linear.k2) == (k1, k2)
    assert adaptive.monotone and linear.monotone


@given(monotone_curves())
def test_adaptive_evaluation_count_is_logarithmic(curve):
    """Growth to k₂ (⌈log₂ k₂⌉ + 1), bisection of k₂'s bracket (⌈log₂ k₂⌉ − 1) and of k₁'s (⌈log₂ k₁⌉ − 1),
    plus the two re-checks; without a collapse, growth runs to k_max."""
    k1, k2, k_max = curve
    stage_at, calls = counted(step_curve(k1, k2))
    result = adaptive_search(stage_at, k_max)
    assert len(calls) == len(set(calls)) == result.evaluations + 1  # each k once, the baseline included
    reach = k2 if k2 is not None else k_max
    growth_and_k2 = 2 * log2_ceil(reach) + (1 if k2 is None else 0)
    k1_bisection = max(log2_ceil(k1) - 1, 0) if k1 is not None else 0
    assert result.evaluations <= growth_and_k2 + k1_bisection + 3


@given(st.integers(1, 8), st.integers(1, 50_000), st.integers(0, 50_000))
def test_issue_bound_holds_when_degradation_starts_early(k1, k2, extra):
    """2⌈log₂ k₂⌉ + 4 evaluations whenever k₁ ≤ 8 (for k₁ in a lower bracket than k₂ its bisection is extra:
    k₁ = 600, k₂ = 1200 takes 33 evaluations, see test_far_apart_thresholds_cost_the_k1_bisection)."""
    assume(k1 <= k2)
    result = adaptive_search(step_curve(k1, k2), k2 + extra)
    assert (result.k1, result.k2) == (k1, k2)
    assert result.evaluations <= 2 * log2_ceil(k2) + 4


def test_far_apart_thresholds_cost_the_k1_bisection():
    """The price of exactness for both thresholds: with k₁ in (512, 1024] and k₂ in (1024, 2048], growth (12) and
    both bisections (10 + 9) are needed; the linear scan needs 1200."""
    adaptive = adaptive_search(step_curve(600, 1200), 11008)
    linear = linear_search(step_curve(600, 1200), 11008)
    assert (adaptive.k1, adaptive.k2) == (linear.k1, linear.k2) == (600, 1200)
    assert adaptive.evaluations == 12 + 10 + 9 + 2  # + the re-checks of k₁ + 1 and k₂ + 1
    assert linear.evaluations == 1200


stage_lists = st.lists(st.integers(0, 2), min_size=1, max_size=300)


@given(stage_lists)
def test_any_curve_reports_only_real_recoveries_and_local_onsets(values):
    """Whatever the curve: every reported violation is real, an evaluated recovery is never hidden, and each
    threshold is an onset the search saw (stage(k) reached, stage(k − 1) below it)."""
    k_max = len(values)
    stage_at = lambda k: 0 if k == 0 else values[k - 1]  # noqa: E731
    result = adaptive_search(stage_at, k_max)
    for k, stage in result.stages.items():
        assert stage == stage_at(k)
    ordered = [result.stages[k] for k in sorted(result.stages)]
    assert result.monotone == (ordered == sorted(ordered))
    for earlier, later in result.violations:
        assert earlier < later and stage_at(earlier) > stage_at(later)
    for threshold, stage in ((result.k1, 1), (result.k2, 2)):
        if threshold is not None:
            assert stage_at(threshold) >= stage > stage_at(threshold - 1)
            assert threshold - 1 in result.stages


@given(st.integers(1, 5_000), st.integers(2, 6_000))
def test_collapse_then_recovery_right_after_is_reported(k2, k_max):
    """Collapse at k₂ and recovery at k₂ + 1: the re-check sees it and the result says non-monotone."""
    assume(k2 < k_max)
    result = adaptive_search(lambda k: 2 if k == k2 else int(k >= 1), k_max)
    if result.k2 == k2:
        assert not result.monotone
        assert (k2, k2 + 1) in result.violations


def test_linear_scan_stops_at_the_first_collapse():
    stage_at, calls = counted(step_curve(3, 7))
    result = linear_search(stage_at, 100)
    assert calls == list(range(8))
    assert (result.k1, result.k2, result.evaluations) == (3, 7, 7)


def test_no_collapse_up_to_k_max():
    result = adaptive_search(step_curve(5, None), 100)
    assert (result.k1, result.k2) == (5, None)
    assert max(result.stages) == 100


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_k_max_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="k_max must be an integer ≥ 1"):
        adaptive_search(step_curve(1, 2), bad)
