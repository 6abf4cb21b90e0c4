"""The two-stage collapse criterion (its defaults: README, *Science defaults*), every threshold an option recorded
with the result.

stage 1, expressive degradation: reference PPL ≥ ppl_ratio × baseline, or CLIP ≤ clip_fraction × baseline.
stage 2, complete collapse: log10(PPL/PPL₀) ≥ log10_ppl_ratio, and (CLIP ≤ chance level, or at least
degenerate_rate of the captions are empty / one token repeated).
Text-only models have no CLIP score. Their stage 2 is PCICN's criterion, the PPL of the text alone (the authors
stop at the first k with log10(PPL/PPL₀) ≥ 1); with text_stage2 = "ppl+degenerate" it also needs at least
degenerate_rate of degenerate continuations (harness.core.metrics.is_degenerate_continuation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from harness.core.errors import UnknownNameError
from harness.core.recorded import MEASUREMENT, affects

TEXT_STAGE2 = ("ppl", "ppl+degenerate")


@dataclass(frozen=True)
class StageThresholds:
    """The criterion's thresholds: each changes stages, never rankings (harness.core.recorded)."""

    stage1_ppl_ratio: float = field(default=2.0, metadata=affects(MEASUREMENT))
    stage1_clip_fraction: float = field(default=0.9, metadata=affects(MEASUREMENT, kinds=("image",)))
    stage2_log10_ppl_ratio: float = field(default=1.0, metadata=affects(MEASUREMENT))
    stage2_degenerate_rate: float = field(default=0.5, metadata=affects(MEASUREMENT))
    # text-only models: "ppl" (PCICN's criterion) or "ppl+degenerate"
    text_stage2: str = field(default="ppl", metadata=affects(MEASUREMENT, kinds=("text",)))

    def __post_init__(self) -> None:
        if self.text_stage2 not in TEXT_STAGE2:
            raise UnknownNameError("text-model stage-2 criterion", self.text_stage2, TEXT_STAGE2)
        for name, value in self.as_dict().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.stage1_ppl_ratio <= 1:
            raise ValueError(f"stage-1 PPL ratio must be > 1, got {self.stage1_ppl_ratio}")
        if not 0 < self.stage1_clip_fraction <= 1:
            raise ValueError(f"stage-1 CLIP fraction must be in (0, 1], got {self.stage1_clip_fraction}")
        if self.stage2_log10_ppl_ratio <= 0:
            raise ValueError(f"stage-2 log10 PPL ratio must be > 0, got {self.stage2_log10_ppl_ratio}")
        if not 0 < self.stage2_degenerate_rate <= 1:
            raise ValueError(f"stage-2 degenerate rate must be in (0, 1], got {self.stage2_degenerate_rate}")

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def classify_stage(
    *,
    k: int,
    log10_ppl_ratio: float,
    clip: float | None,
    clip_baseline: float | None,
    clip_chance: float | None,
    degenerate_rate: float | None,
    thresholds: StageThresholds,
    text_only: bool = False,
) -> int:
    """0 (intact), 1 (expressive degradation) or 2 (complete collapse) for one evaluated k. `degenerate_rate`
    None (nothing generated) is valid only where the stage does not read it: a text model under "ppl"."""
    if degenerate_rate is None and not (text_only and thresholds.text_stage2 == "ppl"):
        raise ValueError(
            "this stage criterion reads the degenerate rate of generated text, but none was generated"
        )
    if k == 0:
        return 0  # the reference point itself
    ppl_collapsed = log10_ppl_ratio >= thresholds.stage2_log10_ppl_ratio
    degenerate = degenerate_rate is not None and degenerate_rate >= thresholds.stage2_degenerate_rate
    if text_only:
        text_lost = thresholds.text_stage2 == "ppl" or degenerate
    else:
        text_lost = (clip is not None and clip_chance is not None and clip <= clip_chance) or degenerate
    if ppl_collapsed and text_lost:
        return 2
    ppl_degraded = log10_ppl_ratio >= math.log10(thresholds.stage1_ppl_ratio)
    clip_degraded = (
        clip is not None and clip_baseline > 0 and clip <= thresholds.stage1_clip_fraction * clip_baseline
    )
    return 1 if ppl_degraded or clip_degraded else 0


def first_k_at_stage(points: Iterable[tuple[int, int]], stage: int) -> int | None:
    """Smallest evaluated k whose stage is at least `stage` ((k, stage) pairs, any order)."""
    reached = [k for k, s in points if s >= stage]
    return min(reached) if reached else None


def is_monotone(points: Iterable[tuple[int, int]]) -> bool:
    """True when the stage never falls as k grows (a collapse followed by a recovery is reported, not hidden)."""
    stages = [s for _, s in sorted(points)]
    return all(a <= b for a, b in itertools.pairwise(stages))
