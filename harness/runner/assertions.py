"""Domain assertions for cases; each failure message carries the curve measured so far. Every helper hides its
own frames from pytest's traceback (`__tracebackhide__`), so a failure points at the case's assert line."""

from __future__ import annotations

from harness.runner.analysis import CurveAnalysis
from harness.runner.baseline import Baselines
from harness.runner.curve import CollapseCurve
from harness.science.metric_registry import CLIP, DEGENERATE_RATE, LOG10_PPL, Metric, get_metric


def _fail(curve: CollapseCurve, message: str) -> None:
    __tracebackhide__ = True
    raise AssertionError(f"{curve.label}: {message}\ncurve so far:\n{curve.table()}")


def _metric_at(target: CollapseCurve | CurveAnalysis, metric_name: str, k: int) -> tuple[Metric, float, float]:
    """(metric, value at k, value at k = 0) on a curve or an analysed curve; a metric its points do not carry is
    a ValueError naming the ones they do."""
    metric = get_metric(metric_name)
    point = _point_of(target, k)
    value, baseline = point.metrics.get(metric.name), point.baselines.get(metric.name)
    if value is None or baseline is None:
        carried = ", ".join(name for name, v in point.metrics.items() if v is not None)
        raise ValueError(f"{point.model} has no {metric.name} measured at k={k} to assert on (it has: {carried})")
    return metric, value, baseline


def _point_of(target: CollapseCurve | CurveAnalysis, k: int):
    """The point at k of a curve (measured if it was not) or of an analysed curve (one it evaluated)."""
    if isinstance(target, CollapseCurve):
        return target.point(k)
    if k not in target.points:
        raise ValueError(f"{target.model}: k={k} was not evaluated by the search (it has {sorted(target.points)})")
    return target.points[k]


def _fail_on(target: CollapseCurve | CurveAnalysis, message: str) -> None:
    __tracebackhide__ = True
    if isinstance(target, CollapseCurve):
        _fail(target, message)
    _fail_analysis(target, message)


def assert_metric_drop(
    target: CollapseCurve | CurveAnalysis, metric: str, k: int, max_fraction: float = 0.9
) -> None:
    """Metric `metric` (harness.science.metric_registry) at k is at most max_fraction of its baseline value, on a
    curve (`collapse_curve`) or an analysed curve (`collapse_analysis`)."""
    __tracebackhide__ = True
    declared, value, baseline = _metric_at(target, metric, k)
    if not value <= max_fraction * baseline:
        _fail_on(
            target,
            f"{declared.title} at k={k} is {declared.format(value)} = {value / max(baseline, 1e-9):.0%} of the "
            f"baseline {declared.format(baseline)}; expected ≤ {max_fraction:.0%}",
        )


def assert_metric_rise(target: CollapseCurve | CurveAnalysis, metric: str, k: int, min_change: float) -> None:
    """Metric `metric` at k exceeds its baseline value by at least `min_change` (for the reference PPL, a log10:
    1.0 is a tenfold PPL), on a curve or an analysed curve."""
    __tracebackhide__ = True
    declared, value, baseline = _metric_at(target, metric, k)
    if not value - baseline >= min_change:
        _fail_on(
            target,
            f"{declared.delta_title or declared.title} at k={k} is {value - baseline:+.2f}; "
            f"expected ≥ {min_change:+g}",
        )


def assert_ppl_blowup(curve: CollapseCurve, k: int, min_log10_ratio: float = 1.0) -> None:
    """The reference PPL at k is at least 10^min_log10_ratio times the baseline PPL."""
    __tracebackhide__ = True
    assert_metric_rise(curve, LOG10_PPL.name, k, min_log10_ratio)


def assert_clip_drop(curve: CollapseCurve, k: int, max_fraction: float = 0.9) -> None:
    """The CLIP score at k is at most max_fraction of the baseline CLIP score."""
    __tracebackhide__ = True
    assert_metric_drop(curve, CLIP.name, k, max_fraction)


def assert_fluent_baseline(target: CollapseCurve | CurveAnalysis, max_degenerate_rate: float = 0.0) -> None:
    """The unmasked model's outputs are language (at most `max_degenerate_rate` degenerate) and every metric
    with a chance level is past it, on a curve or an analysed curve."""
    __tracebackhide__ = True
    point = _point_of(target, 0)
    degenerate = point.metrics.get(DEGENERATE_RATE.name)
    if degenerate is not None and degenerate > max_degenerate_rate:
        _fail_on(target, f"{degenerate:.0%} of the baseline outputs are degenerate")
    for name, chance in point.chance.items():
        metric, value = get_metric(name), point.metrics.get(name)
        if chance is not None and value is not None and metric.at_chance(value, chance):
            _fail_on(target, f"baseline {metric.title} {metric.format(value)} is not past the chance level "
                             f"{metric.format(chance)}")  # fmt: skip


# -- on an analysed curve: thresholds from the search, controls at k₂ -----------------------------------------
def _fail_analysis(analysis: CurveAnalysis, message: str) -> None:
    __tracebackhide__ = True
    raise AssertionError(f"{analysis.label}: {message}\ncurve and controls:\n{analysis.table()}")


def assert_two_stage(analysis: CurveAnalysis) -> None:
    """Expressive degradation comes before complete collapse: k₁ < k₂, both found, on a monotone curve."""
    __tracebackhide__ = True
    search = analysis.search
    if search.k2 is None:
        _fail_analysis(analysis, f"no complete collapse up to k={search.k_max}")
    if search.k1 is None or not search.k1 < search.k2:
        _fail_analysis(analysis, f"no stage-1 range before the collapse: k₁={search.k1}, k₂={search.k2}")
    if not search.monotone:
        _fail_analysis(analysis, f"the curve is not monotone: recoveries at {search.violations}")


def assert_collapses_within(analysis: CurveAnalysis, k_max: int) -> None:
    """Complete collapse at some k ≤ k_max."""
    __tracebackhide__ = True
    k2 = analysis.search.k2
    if k2 is None or k2 > k_max:
        found = "no collapse" if k2 is None else f"k₂ = {k2}"
        _fail_analysis(analysis, f"expected complete collapse by k={k_max}, found {found}")


def assert_no_collapse_within(analysis: CurveAnalysis, k: int) -> None:
    """No complete collapse at any k ≤ `k` (e.g. a vision-side site with as many neurons as collapse the LM)."""
    __tracebackhide__ = True
    k2 = analysis.search.k2
    if k2 is not None and k2 <= k:
        _fail_analysis(analysis, f"expected no complete collapse up to k={k}, found k₂ = {k2}")


def assert_controls_hold(analysis: CurveAnalysis, *, mean_ablation: bool = True) -> None:
    """The collapse is a finding: at k₂, neither k random neurons nor the mean-ablated CAN set collapse.
    `mean_ablation=False` checks the random-k controls only (a massive activation at token 0 replaced by its
    mean over every position is no harmless substitute, so that control is expected to collapse too)."""
    __tracebackhide__ = True
    if analysis.search.k2 is None:
        _fail_analysis(analysis, "no complete collapse: nothing for the controls to check")
    checked = [c for c in analysis.controls if mean_ablation or not c.intervention.endswith("mean ablation")]
    broken = [control.intervention for control in checked if control.stage >= 2]
    if broken:
        _fail_analysis(analysis, f"controls collapse too at k={analysis.search.k2}: {', '.join(broken)}")


def assert_matches_baseline(analysis: CurveAnalysis, baselines: Baselines) -> None:
    """k₁, k₂ and the key metrics stay within tolerance of the stored baseline (`--can-baseline`); with
    `--can-baseline-update` the baseline is rewritten instead; without a baseline file nothing is compared."""
    __tracebackhide__ = True
    problem = baselines.check(analysis)
    if problem is not None:
        _fail_analysis(analysis, problem)
