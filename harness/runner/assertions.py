"""Domain assertions for cases; each failure message carries the curve measured so far. Every helper hides its
own frames from pytest's traceback (`__tracebackhide__`), so a failure points at the case's assert line."""

from __future__ import annotations

from harness.runner.analysis import CurveAnalysis
from harness.runner.baseline import Baselines
from harness.runner.curve import CollapseCurve


def _fail(curve: CollapseCurve, message: str) -> None:
    __tracebackhide__ = True
    raise AssertionError(f"{curve.label}: {message}\ncurve so far:\n{curve.table()}")


def assert_ppl_blowup(curve: CollapseCurve, k: int, min_log10_ratio: float = 1.0) -> None:
    """The reference PPL at k is at least 10^min_log10_ratio times the baseline PPL."""
    __tracebackhide__ = True
    point = curve.point(k)
    if not point.log10_ppl_ratio >= min_log10_ratio:
        _fail(
            curve,
            f"reference PPL at k={k} is 10^{point.log10_ppl_ratio:.2f} × baseline; "
            f"expected ≥ 10^{min_log10_ratio:g}",
        )


def assert_clip_drop(curve: CollapseCurve, k: int, max_fraction: float = 0.9) -> None:
    """The CLIP score at k is at most max_fraction of the baseline CLIP score."""
    __tracebackhide__ = True
    point = curve.point(k)
    if point.clip is None or point.clip_baseline is None:
        raise ValueError(f"{point.model} is a text-only model: it has no CLIP score to assert on (use the PPL)")
    if not point.clip <= max_fraction * point.clip_baseline:
        _fail(
            curve,
            f"CLIP score at k={k} is {point.clip:.1f} = {point.clip / max(point.clip_baseline, 1e-9):.0%} of the "
            f"baseline {point.clip_baseline:.1f}; expected ≤ {max_fraction:.0%}",
        )


def assert_fluent_baseline(curve: CollapseCurve, max_degenerate_rate: float = 0.0) -> None:
    """The unmasked model captions the images: no degenerate captions and CLIP above the chance level."""
    __tracebackhide__ = True
    point = curve.point(0)
    if point.degenerate_rate > max_degenerate_rate:
        _fail(curve, f"{point.degenerate_rate:.0%} of the baseline captions are degenerate")
    if point.clip_chance is not None and not point.clip > point.clip_chance:
        _fail(curve, f"baseline CLIP {point.clip:.1f} is not above the chance level {point.clip_chance:.1f}")


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
