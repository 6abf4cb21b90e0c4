"""A curve analysed: thresholds, controls at k₂, layer breakdown, and the assertions that read them."""

from __future__ import annotations

import pytest

from harness.reporting.report import render_thresholds
from harness.runner.analysis import ControlOutcome, CurveAnalysis, analyse_curve
from harness.runner.assertions import (
    assert_collapses_within,
    assert_controls_hold,
    assert_fluent_baseline,
    assert_metric_rise,
    assert_two_stage,
)
from harness.runner.curve import CollapseCurve
from harness.science.threshold_search import ThresholdSearch

SITE = "lm.down_proj"


def test_analysis_measures_controls_at_k2_and_the_layer_breakdown(experiment, unmodified):
    analysis = analyse_curve(experiment.with_settings(control_seeds=2), SITE, "circle")
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


def verdict(check, target) -> str | None:
    """The first line of `check(target)`'s assertion failure (None: it passed)."""
    try:
        check(target)
    except AssertionError as error:
        return str(error).splitlines()[0]
    return None


def test_the_point_assertions_read_an_analysed_curve_as_its_curve(experiment, unmodified):
    """`assert_fluent_baseline` and the metric assertions give the same verdict on a case's `collapse_analysis`
    as on the curve it searched; a k the search did not evaluate is named, with the ones it did."""
    curve = CollapseCurve(experiment, SITE, "circle")
    analysis = analyse_curve(experiment, SITE, "circle", curve=curve)
    k = max(analysis.points)
    for check in (
        lambda target: assert_fluent_baseline(target),
        lambda target: assert_fluent_baseline(target, max_degenerate_rate=1.0),
        lambda target: assert_metric_rise(target, "log10_ppl", k, 0.5),
    ):
        assert verdict(check, analysis) == verdict(check, curve)
    missing = next(k for k in range(1, 10**6) if k not in analysis.points)
    with pytest.raises(ValueError, match=rf"k={missing} was not evaluated by the search \(it has \[0, "):
        assert_metric_rise(analysis, "log10_ppl", missing, 0.5)


def made_up(stages: dict[int, int], k1, k2, control_stages=(0, 1)) -> CurveAnalysis:
    search = ThresholdSearch("adaptive", 64, {0: 0, **stages}, k1, k2)
    controls = [
        ControlOutcome(f"control {i}", k2 or 0, stage, {"log10_ppl": 0.1 * stage, "clip": 50.0})
        for i, stage in enumerate(control_stages)
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
    """With `measure_many=curve.measured_many` the search takes the grid's points as they are and measures only
    the rest; what it measures is kept on the curve for later grid cases, without being reported as grid
    points."""
    curve = CollapseCurve(experiment, SITE, "square")
    reported = []
    curve.on_point = reported.append
    grid = [0, 1, 2, 4, 8]
    for k in grid:
        curve.measure(k)
    measured_now = []
    original = experiment.measure_many

    def counting(site, category, variants, **options):
        measured_now.extend(k for k, _ in variants)
        return original(site, category, variants, **options)

    monkeypatch.setattr(experiment, "measure_many", counting)
    kept = dict(curve.points)
    search = curve.search()
    assert sorted(measured_now) == sorted(set(search.stages) - set(grid))
    assert all(curve.points[k] is kept[k] for k in set(search.stages) & set(grid))
    assert set(curve.points) == set(grid) | set(search.stages)
    assert [point.k for point in reported] == grid


# -- several ks per pass -----------------------------------------------------------------------------------------
def analysed_with(experiment, site: str, category: str, parallel: int) -> CurveAnalysis:
    return analyse_curve(experiment.with_settings(search_parallel=parallel, control_seeds=2), site, category)


def without_cost(analysis: CurveAnalysis) -> str:
    """The threshold table of one curve with its cost columns (evaluations, passes) blanked."""
    return render_thresholds([{**analysis.to_row(), "evaluations": 0, "passes": []}])


@pytest.mark.parametrize(("site", "category"), [("lm.down_proj", "circle"), ("lm.gate_proj", "cross")])
def test_a_k_parallel_search_gives_the_sequential_table_in_fewer_passes(synth_session, site, category):
    """An embedded model's curve searched one k a pass and three ks a pass (per-row masks): the same k₁, k₂,
    metrics at k₂, controls and layers — the table is identical but for its cost columns — in fewer batched
    passes; every point both searches evaluated is the same point. (The untrained tiny models' curves are not
    monotone, where two searches that look at different ks may rightly see different onsets.)"""
    experiment = synth_session.experiment("synth-llava")
    sequential = analysed_with(experiment, site, category, parallel=1)
    parallel = analysed_with(experiment, site, category, parallel=3)
    assert without_cost(parallel) == without_cost(sequential)
    assert len(parallel.search.rounds) < len(sequential.search.rounds) == sequential.search.evaluations
    for k in set(parallel.points) & set(sequential.points):
        assert parallel.points[k].stage == sequential.points[k].stage
        assert parallel.points[k].captions == sequential.points[k].captions
        assert parallel.points[k].log10_ppl_ratio == pytest.approx(sequential.points[k].log10_ppl_ratio, abs=1e-5)
