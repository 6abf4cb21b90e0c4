"""Find the two collapse thresholds of a curve with few evaluations: k₁ (first k at stage ≥ 1) and k₂ = k* (first
k at stage 2) over the nested top-k sets.

The papers step k = 1, 2, 3, … (≈ 1200 masked evaluations for InstructBLIP). If the stage never falls as k
grows, exponential growth (1, 2, 4, …) followed by bisection of each threshold's bracket finds the same k₁ and
k₂ as that linear scan. Nothing guarantees monotonicity, so the search also re-checks k + 1 after each threshold
(the "collapse at k, recovery at k + 1" case) and reports every evaluated point that contradicts monotonicity;
it never smooths them away. A non-monotone dip *between* evaluated points is invisible to any sublinear search:
the linear mode is there to look for those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SEARCH_MODES = ("adaptive", "linear")


@dataclass(frozen=True)
class ThresholdSearch:
    """The outcome of one search: thresholds, every evaluated point (k → stage) and whether they are monotone."""

    mode: str
    k_max: int
    stages: dict[int, int]  # every evaluated k (0 = the unmasked baseline) → its stage
    k1: int | None  # first evaluated k at stage ≥ 1 whose predecessor k − 1 is below it (None: none ≤ k_max)
    k2: int | None

    @property
    def evaluations(self) -> int:
        """Masked evaluations spent (k ≥ 1); the baseline k = 0 is shared by every search of a curve."""
        return sum(1 for k in self.stages if k > 0)

    @property
    def violations(self) -> list[tuple[int, int]]:
        """Pairs (k, k') of evaluated points with k < k' but stage(k) > stage(k'): where the curve recovers."""
        ordered = sorted(self.stages.items())
        found, highest_k, highest = [], None, -1
        for k, stage in ordered:
            if stage < highest:
                found.append((highest_k, k))
            elif stage > highest:
                highest_k, highest = k, stage
        return found

    @property
    def monotone(self) -> bool:
        return not self.violations


def linear_search(stage_at: Callable[[int], int], k_max: int) -> ThresholdSearch:
    """The papers' scan: k = 1, 2, 3, … up to the first complete collapse (or k_max)."""
    _check_k_max(k_max)
    stages = {0: stage_at(0)}
    for k in range(1, k_max + 1):
        stages[k] = stage_at(k)
        if stages[k] >= 2:
            break
    return ThresholdSearch("linear", k_max, stages, _first_at(stages, 1), _first_at(stages, 2))


def adaptive_search(stage_at: Callable[[int], int], k_max: int) -> ThresholdSearch:
    """Exponential growth until stage 2 (or k_max), bisection of the k₂ then the k₁ bracket, then k + 1 re-checked
    after each threshold. On a monotone curve: the linear scan's k₁ and k₂."""
    _check_k_max(k_max)
    stages: dict[int, int] = {0: stage_at(0)}

    def evaluate(k: int) -> int:
        if k not in stages:
            stages[k] = stage_at(k)
        return stages[k]

    k = 1
    while evaluate(k) < 2 and k < k_max:
        k = min(2 * k, k_max)
    thresholds = {}
    for stage in (2, 1):
        below, above = _bracket(stages, stage)
        if above is None:
            thresholds[stage] = None
            continue
        while above - below > 1:
            middle = (below + above) // 2
            if evaluate(middle) >= stage:
                above = middle
            else:
                below = middle
        thresholds[stage] = above
        if above < k_max:
            evaluate(above + 1)  # re-check: does the curve recover right after the threshold?
    return ThresholdSearch("adaptive", k_max, stages, thresholds[1], thresholds[2])


def _bracket(stages: dict[int, int], stage: int) -> tuple[int, int | None]:
    """(largest evaluated k below the smallest evaluated k at ≥ stage with stage(k) < stage, that smallest k)."""
    above = min((k for k, s in stages.items() if s >= stage), default=None)
    if above is None:
        return max(stages), None
    # -1 when the baseline itself is already at `stage`: the threshold is then k = 0
    below = max((k for k, s in stages.items() if k < above and s < stage), default=-1)
    return below, above


def _first_at(stages: dict[int, int], stage: int) -> int | None:
    return min((k for k, s in stages.items() if s >= stage), default=None)


def _check_k_max(k_max: int) -> None:
    if not isinstance(k_max, int) or isinstance(k_max, bool) or k_max < 1:
        raise ValueError(f"k_max must be an integer ≥ 1 (the largest k to search), got {k_max!r}")
