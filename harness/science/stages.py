"""The two-stage collapse criterion (its defaults: README, *Science defaults*), every threshold an option recorded
with the result, each metric's part in it declared with the metric (harness.science.metric_registry).

stage 1, expressive degradation: any metric's stage-1 condition holds (reference PPL ≥ ppl_ratio × baseline, or
CLIP ≤ clip_fraction × baseline).
stage 2, complete collapse: every required stage-2 condition holds (log10(PPL/PPL₀) ≥ log10_ppl_ratio) and, when
the probe's criterion has other stage-2 conditions, at least one of them (CLIP ≤ its chance level, or at least
degenerate_rate of the outputs degenerate).
A probe chooses the metrics its criterion reads: text-only models have no CLIP score, and their stage 2 is
PCICN's, the PPL of the text alone (the authors stop at the first k with log10(PPL/PPL₀) ≥ 1); with text_stage2 =
"ppl+degenerate" the degenerate rate of their continuations takes part too
(harness.core.metrics.is_degenerate_continuation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from harness.core.errors import UnknownNameError
from harness.core.recorded import MEASUREMENT, affects
from harness.science.metric_registry import Metric, Rule, get_metric

TEXT_STAGE2 = ("ppl", "ppl+degenerate")


@dataclass(frozen=True)
class StageThresholds:
    """The criterion's thresholds: each changes stages, never rankings (harness.core.recorded)."""

    stage1_ppl_ratio: float = field(default=2.0, metadata=affects(MEASUREMENT))
    stage1_clip_fraction: float = field(default=0.9, metadata=affects(MEASUREMENT, kinds=("captioning",)))
    # visual question answering: stage 1 when the accuracy falls to this fraction of its baseline
    stage1_accuracy_fraction: float = field(default=0.9, metadata=affects(MEASUREMENT, kinds=("vqa",)))
    stage2_log10_ppl_ratio: float = field(default=1.0, metadata=affects(MEASUREMENT))
    stage2_degenerate_rate: float = field(default=0.5, metadata=affects(MEASUREMENT))
    # text-only models: "ppl" (PCICN's criterion) or "ppl+degenerate"
    text_stage2: str = field(default="ppl", metadata=affects(MEASUREMENT, kinds=("continuation",)))

    def __post_init__(self) -> None:
        if self.text_stage2 not in TEXT_STAGE2:
            raise UnknownNameError("text-model stage-2 criterion", self.text_stage2, TEXT_STAGE2)
        for name, value in self.as_dict().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.stage1_ppl_ratio <= 1:
            raise ValueError(f"stage-1 PPL ratio must be > 1, got {self.stage1_ppl_ratio}")
        for name in ("stage1_clip_fraction", "stage1_accuracy_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.stage2_log10_ppl_ratio <= 0:
            raise ValueError(f"stage-2 log10 PPL ratio must be > 0, got {self.stage2_log10_ppl_ratio}")
        if not 0 < self.stage2_degenerate_rate <= 1:
            raise ValueError(f"stage-2 degenerate rate must be in (0, 1], got {self.stage2_degenerate_rate}")

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class Criterion:
    """The criterion of one probe: the metrics it reads (each by its declared rules) and the thresholds."""

    metrics: tuple[str, ...]
    thresholds: StageThresholds

    def stage(
        self,
        k: int,
        values: Mapping[str, float | None],
        baselines: Mapping[str, float | None],
        chance: Mapping[str, float | None],
    ) -> int:
        """0 (intact), 1 (expressive degradation) or 2 (complete collapse) for one evaluated k. A metric the
        criterion reads must have been measured (a text model's continuations generated when it reads their
        degenerate rate); k = 0 is the reference point itself."""
        metrics = [get_metric(name) for name in self.metrics]
        missing = [metric.name for metric in metrics if values.get(metric.name) is None]
        if missing:
            raise ValueError(
                f"this stage criterion reads {', '.join(missing)}, but it was not measured (nothing was generated)"
            )
        if k == 0:
            return 0

        def holds(metric: Metric, rule: Rule) -> bool:
            return _holds(metric, rule, values[metric.name], baselines.get(metric.name), chance.get(metric.name),
                          self.thresholds)  # fmt: skip

        required = [holds(m, m.stage2) for m in metrics if m.stage2 is not None and m.stage2_required]
        either = [holds(m, m.stage2) for m in metrics if m.stage2 is not None and not m.stage2_required]
        if all(required) and (not either or any(either)):
            return 2
        return 1 if any(holds(m, m.stage1) for m in metrics if m.stage1 is not None) else 0


def _holds(
    metric: Metric,
    rule: Rule,
    value: float,
    baseline: float | None,
    chance: float | None,
    thresholds: StageThresholds,
) -> bool:
    """Whether `metric`'s `value` (with its baseline and chance level) meets `rule` under `thresholds`."""
    threshold = None if rule.threshold is None else getattr(thresholds, rule.threshold)
    if rule.kind == "at_chance":
        return chance is not None and metric.at_chance(value, chance)
    if rule.kind == "at_least":
        return value >= threshold
    if baseline is None:
        return False
    if rule.kind == "ratio_at_least":
        return value - baseline >= math.log10(threshold)
    if rule.kind == "delta_at_least":
        return value - baseline >= threshold
    return baseline > 0 and value <= threshold * baseline  # fraction_at_most


def first_k_at_stage(points: Iterable[tuple[int, int]], stage: int) -> int | None:
    """Smallest evaluated k whose stage is at least `stage` ((k, stage) pairs, any order)."""
    reached = [k for k, s in points if s >= stage]
    return min(reached) if reached else None


def is_monotone(points: Iterable[tuple[int, int]]) -> bool:
    """True when the stage never falls as k grows (a collapse followed by a recovery is reported, not hidden)."""
    stages = [s for _, s in sorted(points)]
    return all(a <= b for a, b in itertools.pairwise(stages))
