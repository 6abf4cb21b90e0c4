"""A curve analysed: thresholds, controls at k₂, layer breakdown, and the assertions that read them."""

from __future__ import annotations

import pytest

from harness.analysis import ControlOutcome, CurveAnalysis, analyse_curve
from harness.assertions import assert_collapses_within, assert_controls_hold, assert_two_stage
from harness.curve import CollapseCurve
from harness.threshold_search import ThresholdSearch

SITE = "lm.down_proj"


def test_analysis_measures_controls_at_k2_and_the_layer_breakdown(experiment, unmodified):
    analysis = analyse_curve(experiment, SITE, "circle", random_seeds=2)
    search = analysis.search
    assert set(analysis.points) == set(search.stages)
    if search.k2 is None:
        assert analysis.controls == [] and analysis.layers == {}
        return
    labels = [control.intervention for control in analysis.controls]
    assert labels == [
        "random-k (seed 0), zero ablation",
        "random-k (seed 1), zero ablation",
        "top-k, mean ablation",
    ]
    assert all(control.k == search.k2 for control in analysis.controls)
    assert list(analysis.layers) == [SITE]
    assert sum(analysis.layers[SITE].values()) == search.k2
    assert set(analysis.layers[SITE]) <= set(range(experiment.site(SITE).n_layers))
    assert analysis.finding == all(control.stage < 2 for control in analysis.controls)


def made_up(stages: dict[int, int], k1, k2, control_stages=(0, 1)) -> CurveAnalysis:
    search = ThresholdSearch("adaptive", 64, {0: 0, **stages}, k1, k2)
    controls = [
        ControlOutcome(f"control {i}", k2 or 0, stage, 0.1 * stage, 50.0) for i, stage in enumerate(control_stages)
    ]
    return CurveAnalysis("m", SITE, "circle", search, {}, controls if k2 else [], {SITE: {0: k2 or 0}})


def test_two_stage_curve_passes_every_assertion():
    analysis = made_up({2: 0, 4: 1, 8: 2, 5: 1, 6: 2}, 4, 6)
    assert_two_stage(analysis)
    assert_collapses_within(analysis, 6)
    assert_controls_hold(analysis)
    assert analysis.finding


@pytest.mark.parametrize(
    ("analysis", "message"),
    [
        (made_up({1: 1, 64: 1}, 1, None), "no complete collapse up to k=64"),
        (made_up({1: 0, 2: 2}, 2, 2), "no stage-1 range before the collapse: k₁=2, k₂=2"),
        (made_up({1: 1, 2: 2, 3: 1}, 1, 2), r"not monotone: recoveries at \[\(2, 3\)\]"),
    ],
)
def test_assert_two_stage_says_what_is_missing(analysis, message):
    with pytest.raises(AssertionError, match=message):
        assert_two_stage(analysis)


def test_assert_collapses_within_names_the_bound_and_the_finding():
    with pytest.raises(AssertionError, match="expected complete collapse by k=4, found k₂ = 6"):
        assert_collapses_within(made_up({4: 1, 6: 2, 5: 1}, 4, 6), 4)
    with pytest.raises(AssertionError, match="found no collapse"):
        assert_collapses_within(made_up({1: 1}, 1, None), 4)


def test_assert_controls_hold_names_the_control_that_collapses():
    analysis = made_up({4: 1, 6: 2, 5: 1}, 4, 6, control_stages=(0, 2))
    assert not analysis.finding
    with pytest.raises(AssertionError, match="controls collapse too at k=6: control 1") as error:
        assert_controls_hold(analysis)
    assert "control at k=6: control 1: stage 2" in str(error.value)  # the table lists every control
    with pytest.raises(AssertionError, match="nothing for the controls to check"):
        assert_controls_hold(made_up({1: 1}, 1, None))


def test_search_reuses_the_points_a_grid_already_measured(experiment, monkeypatch):
    """With `measure=curve.measured` the search takes the grid's points as they are and measures only the rest;
    what it measures is kept on the curve for later grid cases, without being reported as grid points."""
    curve = CollapseCurve(experiment, SITE, "square")
    reported = []
    curve.on_point = reported.append
    grid = [0, 1, 2, 4, 8]
    for k in grid:
        curve.measure(k)
    measured_now = []
    original = experiment.measure

    def counting(site, category, k, *args, **kwargs):
        measured_now.append(k)
        return original(site, category, k, *args, **kwargs)

    monkeypatch.setattr(experiment, "measure", counting)
    search, points = experiment.search(SITE, "square", measure=curve.measured)
    assert sorted(measured_now) == sorted(set(search.stages) - set(grid))
    assert all(points[k] is curve.points[k] for k in set(search.stages) & set(grid))
    assert set(curve.points) == set(grid) | set(search.stages)
    assert [point.k for point in reported] == grid
