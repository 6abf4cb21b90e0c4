"""Threshold search: on monotone curves the adaptive search finds the linear scan's k₁ and k₂ in logarithmically
many evaluations; on any curve it reports what it saw, recoveries included."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from harness.science.threshold_search import (
    adaptive_search,
    bracket_edges,
    linear_search,
    parallel_search,
    search_slack,
    search_thresholds,
)


def step_curve(k1: int | None, k2: int | None):
    """Stage 0 below k1, 1 from k1, 2 from k2 (None: never)."""

    def stage_at(k: int) -> int:
        if k2 is not None and k >= k2:
            return 2
        return int(k1 is not None and k >= k1)

    return stage_at


def batched(stage_at):
    """The batch interface of the searches (several ks per pass) over a one-k curve."""
    return lambda ks: [stage_at(k) for k in ks]


def counted(stage_at):
    calls: list[int] = []

    def wrapper(k: int) -> int:
        calls.append(k)
        return stage_at(k)

    return wrapper, calls


@st.composite
def monotone_curves(draw, collapse: bool | None = None, largest: int = 2**22):
    """(k₁, k₂, k_max) of a step curve; k_max mostly at sizes of one FFN site, sometimes of a whole 7B model's."""
    k_max = draw(st.one_of(st.integers(1, min(largest, 20_000)), st.integers(1, largest)))
    no_collapse = st.none() if collapse is not True else st.nothing()
    k2 = draw(st.one_of(no_collapse, st.integers(1, k_max)) if collapse is not False else st.none())
    k1 = draw(st.one_of(st.none(), st.integers(1, k2 if k2 is not None else k_max)))
    if k2 is not None and k1 is None:
        k1 = k2  # stage 2 implies stage ≥ 1: the first collapse is also the first degradation
    return k1, k2, k_max


def log2_ceil(k: int) -> int:
    return math.ceil(math.log2(k)) if k > 1 else 0


@given(monotone_curves(largest=20_000))  # the linear scan's own cost bounds k_max here
def test_adaptive_finds_the_linear_thresholds_on_monotone_curves(curve):
    k1, k2, k_max = curve
    adaptive = adaptive_search(step_curve(k1, k2), k_max)
    linear = linear_search(batched(step_curve(k1, k2)), k_max)
    assert (adaptive.k1, adaptive.k2) == (linear.k1, linear.k2) == (k1, k2)
    assert adaptive.monotone and linear.monotone


@given(monotone_curves(collapse=True))
def test_issue_bound_holds_with_the_recheck(curve):
    """The issue's bound, 2⌈log₂ k₂⌉ + 4 evaluations in all (k_max ≤ 2^27), whatever k₁ is: at most + 3 to find
    k₁ and k₂, and the re-check of k₂ + 1. Each k is evaluated once."""
    k1, k2, k_max = curve
    stage_at, calls = counted(step_curve(k1, k2))
    result = adaptive_search(stage_at, k_max)
    assert len(calls) == len(set(calls)) == result.evaluations + 1  # the baseline k = 0 is the + 1
    assert set(result.rechecked) <= {k2 + 1} and (k2 == k_max or k2 + 1 in result.stages)
    assert result.evaluations - len(result.rechecked) <= 2 * log2_ceil(k2) + 3
    assert result.evaluations <= 2 * log2_ceil(k2) + 4


@given(monotone_curves(collapse=False))
def test_without_collapse_the_search_costs_what_a_collapse_at_k_max_would(curve):
    k1, _, k_max = curve
    result = adaptive_search(step_curve(k1, None), k_max)
    assert (result.k1, result.k2) == (k1, None)
    assert k_max in result.stages
    assert result.evaluations - len(result.rechecked) <= 2 * log2_ceil(k_max) + 3


@pytest.mark.parametrize("k_max", [1, 2, 3, 7, 8, 9, 16, 40, 64, 100])
def test_every_monotone_curve_of_a_small_site_meets_the_slack_exactly(k_max):
    """Exhaustively: every (k₁, k₂) is found, and the worst curve needs exactly 2⌈log₂ k₂⌉ + search_slack
    evaluations before the re-check (so the bound is tight, not loose)."""
    worst = -math.inf
    for k2 in range(1, k_max + 1):
        for k1 in range(1, k2 + 1):
            result = adaptive_search(step_curve(k1, k2), k_max)
            assert (result.k1, result.k2) == (k1, k2)
            worst = max(worst, result.evaluations - len(result.rechecked) - 2 * log2_ceil(k2))
    assert worst == search_slack(k_max)


@pytest.mark.parametrize(
    ("k_max", "slack"),
    [
        (1, 1),
        (8, 1),
        (16, 2),
        (2048, 2),
        (2049, 2),
        (4096, 3),
        (11008, 3),
        (32 * 11008, 3),
        (2**27, 3),
        (2**28, 4),
    ],
)
def test_slack_by_site_size(k_max, slack):
    """Bracket (2^(m−1), 2^m] costs 2(m − 1) after it is found and k₂ = 1 costs nothing, so for k_max = 2^M a
    slack c is possible iff 2^−c + (M + 1)·2^−(c+2) ≤ 1 (Kraft). A k_max just above a power of two has a last
    bracket that costs less, e.g. 2049 still has c = 2."""
    assert search_slack(k_max) == slack


def test_far_apart_thresholds():
    """k₁ in (512, 1024] and k₂ in (1024, 2048] on one LLaVA-7b layer's FFN: plain exponential growth and two
    bisections took 33 evaluations (12 + 10 + 9 + re-checks of k₁ + 1 and k₂ + 1); the bracket code takes at most
    2·11 + 3 + the re-check of k₂ + 1. The linear scan needs 1200."""
    adaptive = adaptive_search(step_curve(600, 1200), 11008)
    linear = linear_search(batched(step_curve(600, 1200)), 11008)
    assert (adaptive.k1, adaptive.k2) == (linear.k1, linear.k2) == (600, 1200)
    assert adaptive.rechecked == (1201,)
    assert adaptive.evaluations <= 26
    assert linear.evaluations == 1200


def test_bracket_edges():
    assert bracket_edges(1) == [1]
    assert bracket_edges(11) == [1, 2, 4, 8, 11]
    assert bracket_edges(16) == [1, 2, 4, 8, 16]


stage_lists = st.lists(st.integers(0, 2), min_size=1, max_size=300)


@given(stage_lists)
def test_any_curve_reports_only_real_recoveries_and_local_onsets(values):
    """Whatever the curve: every reported violation is real, an evaluated recovery is never hidden, and each
    threshold is the first evaluated point at its stage and an onset the search saw (stage(k − 1) below it)."""
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
        at_stage = [k for k, s in result.stages.items() if s >= stage]
        assert threshold == min(at_stage, default=None)  # no evaluated point below a threshold reaches its stage
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
    result = linear_search(batched(stage_at), 100)
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


# -- several ks per pass -----------------------------------------------------------------------------------
parallel_widths = st.sampled_from([2, 3, 4, 7, 16])


def counted_batches(stage_at):
    passes: list[list[int]] = []

    def wrapper(ks):
        passes.append(list(ks))
        return [stage_at(k) for k in ks]

    return wrapper, passes


@given(monotone_curves(), parallel_widths)
def test_parallel_search_finds_the_linear_thresholds_in_fewer_passes(curve, parallel):
    """(P+1)-ary: the sequential search's k₁ and k₂ on every monotone curve, never more passes than it, at most
    P ks a pass, each k evaluated once, and the passes reported as they ran."""
    k1, k2, k_max = curve
    stages_at, passes = counted_batches(step_curve(k1, k2))
    result = parallel_search(stages_at, k_max, parallel)
    sequential = adaptive_search(step_curve(k1, k2), k_max)
    assert (result.k1, result.k2) == (sequential.k1, sequential.k2) == (k1, k2)
    assert result.monotone
    assert passes[0] == [0] and [list(r) for r in result.rounds] == passes[1:]
    assert all(1 <= len(ks) <= parallel for ks in result.rounds)
    evaluated = [k for ks in passes for k in ks]
    assert len(evaluated) == len(set(evaluated)) == result.evaluations + 1
    assert len(result.rounds) <= sequential.evaluations
    if k2 is not None and k2 < k_max:
        assert k2 + 1 in result.stages  # the recovery re-check, as in the sequential search


@given(monotone_curves(collapse=True, largest=20_000), st.sampled_from([3, 4]))
def test_parallel_search_passes_shrink_with_the_width(curve, parallel):
    """The bound the speed-up rests on: a (P+1)-ary search needs about log_(P+1) of the ks a bisection needs —
    here at most ⌈(2⌈log₂ k₂⌉ + 4) / 1.5⌉ + 1 passes for P ≥ 3."""
    k1, k2, k_max = curve
    result = parallel_search(batched(step_curve(k1, k2)), k_max, parallel)
    assert len(result.rounds) <= math.ceil((2 * log2_ceil(k2) + 4) / 1.5) + 1


@given(stage_lists, parallel_widths)
def test_parallel_search_on_any_curve_reports_what_it_saw(values, parallel):
    """As for the sequential search: recoveries are never hidden, thresholds are first evaluated onsets."""
    k_max = len(values)
    stage_at = lambda k: 0 if k == 0 else values[k - 1]  # noqa: E731
    result = parallel_search(batched(stage_at), k_max, parallel)
    ordered = [result.stages[k] for k in sorted(result.stages)]
    assert result.monotone == (ordered == sorted(ordered))
    for threshold, stage in ((result.k1, 1), (result.k2, 2)):
        assert threshold == min((k for k, s in result.stages.items() if s >= stage), default=None)
        if threshold is not None:
            assert stage_at(threshold) >= stage > stage_at(threshold - 1)
    if result.k2 is not None and result.k2 < k_max:
        assert result.k2 + 1 in result.stages


def test_search_thresholds_with_one_k_a_pass_is_the_sequential_search():
    sequential = adaptive_search(step_curve(600, 1200), 11008)
    result = search_thresholds("adaptive", batched(step_curve(600, 1200)), 11008, parallel=1)
    assert (result.stages, result.k1, result.k2, result.rechecked) == (
        sequential.stages, sequential.k1, sequential.k2, sequential.rechecked,
    )  # fmt: skip
    assert [ks for ks in result.rounds] == [(k,) for k in sequential.stages if k > 0]


def test_linear_scan_in_passes_of_several_ks():
    result = search_thresholds("linear", batched(step_curve(3, 7)), 100, parallel=3)
    assert result.rounds == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    assert (result.k1, result.k2, result.evaluations) == (3, 7, 9)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_ks_per_pass_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="ks per search pass must be an integer ≥ 1"):
        search_thresholds("adaptive", batched(step_curve(1, 2)), 16, parallel=bad)
