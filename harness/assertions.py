"""Domain assertions for cases; each failure message carries the curve measured so far."""

from __future__ import annotations

from harness.curve import CollapseCurve


def _fail(curve: CollapseCurve, message: str) -> None:
    raise AssertionError(f"{curve.label}: {message}\ncurve so far:\n{curve.table()}")


def assert_ppl_blowup(curve: CollapseCurve, k: int, min_log10_ratio: float = 1.0) -> None:
    """The reference PPL at k is at least 10^min_log10_ratio times the baseline PPL."""
    point = curve.point(k)
    if not point.log10_ppl_ratio >= min_log10_ratio:
        _fail(
            curve,
            f"reference PPL at k={k} is 10^{point.log10_ppl_ratio:.2f} × baseline; "
            f"expected ≥ 10^{min_log10_ratio:g}",
        )


def assert_clip_drop(curve: CollapseCurve, k: int, max_fraction: float = 0.9) -> None:
    """The CLIP score at k is at most max_fraction of the baseline CLIP score."""
    point = curve.point(k)
    if not point.clip <= max_fraction * point.clip_baseline:
        _fail(
            curve,
            f"CLIP score at k={k} is {point.clip:.1f} = {point.clip / max(point.clip_baseline, 1e-9):.0%} of the "
            f"baseline {point.clip_baseline:.1f}; expected ≤ {max_fraction:.0%}",
        )


def assert_fluent_baseline(curve: CollapseCurve, max_degenerate_rate: float = 0.0) -> None:
    """The unmasked model captions the images: no degenerate captions and CLIP above the chance level."""
    point = curve.point(0)
    if point.degenerate_rate > max_degenerate_rate:
        _fail(curve, f"{point.degenerate_rate:.0%} of the baseline captions are degenerate")
    if point.clip_chance is not None and not point.clip > point.clip_chance:
        _fail(curve, f"baseline CLIP {point.clip:.1f} is not above the chance level {point.clip_chance:.1f}")
