"""Metrics as declarations: what each measures, which way is better, how it is shown, how far a baseline lets it
move, and its part in the two-stage criterion. A point carries `{metric: value}`; the stage rule, the curve and
threshold tables, the reports, the baseline comparison, the plots and the assertions loop over these declarations,
so a new metric (a task accuracy, a judge score) is one `register_metric(Metric(...))` beside the probe that
measures it.

Every value is a mean over a category's samples. A metric shown as a change (`delta_title`) is compared with its
baseline (k = 0) as a difference, a log-space ratio for the reference PPL; the others by their value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.core.errors import UnknownNameError
from harness.core.metrics import format_ppl
from harness.core.named import Registry

# How a metric takes part in the stage criterion (harness.science.stages), each against a StageThresholds field:
# "ratio_at_least": its change against the baseline (a log10) is at least log10(threshold) — a PPL ratio;
# "delta_at_least": its change against the baseline is at least the threshold;
# "fraction_at_most": its value is at most threshold × its baseline (a baseline ≤ 0 never triggers it);
# "at_least": its value is at least the threshold;
# "at_chance": its value is at its own chance level at that k, or worse (no threshold).
RULE_KINDS = ("ratio_at_least", "delta_at_least", "fraction_at_most", "at_least", "at_chance")


@dataclass(frozen=True)
class Rule:
    """One condition of the criterion on one metric. `threshold`: the StageThresholds field it reads."""

    kind: str
    threshold: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise UnknownNameError("stage rule", self.kind, RULE_KINDS)
        if (self.threshold is None) != (self.kind == "at_chance"):
            raise ValueError(f"a {self.kind!r} rule {'takes no' if self.threshold else 'needs a'} threshold field")


@dataclass(frozen=True)
class Metric:
    """One measured quantity of a point.

    `stage1`: the condition that alone makes a point stage 1 (expressive degradation). `stage2`: its condition in
    complete collapse; `required` ones must all hold, and of the others (signs that the output no longer carries
    the input: CLIP at chance, degenerate text) at least one must, when a probe's criterion has any.
    `tolerance`: how far a regression baseline lets it move (absolute, at k = 0 and at k₂), set by the option
    `tolerance_flag`; None: baselines do not compare it. `in_tables`: shown in the summary and threshold tables
    (`title₀`, its chance level, its value at k₂)."""

    name: str
    title: str
    description: str
    higher_is_better: bool
    format: Callable[[float], str]
    tolerance: float | None = None
    tolerance_flag: str | None = None
    delta_title: str | None = None  # shown (and compared at k₂) as its change against the baseline
    point_title: str | None = None  # its header in a curve's table, when not `title`
    chance_title: str | None = None  # it has a chance level, shown under this header
    stage1: Rule | None = None
    stage2: Rule | None = None
    stage2_required: bool = False
    in_tables: bool = True
    in_curves: bool = True  # shown in a curve's table (failure messages, --can-show-curves)
    needs_generation: bool = True  # measured on generated text (False: on given text, by a forward pass)

    def shown(self, value: float | None) -> str:
        """The value for a table: formatted, or n/a where there is none."""
        return "n/a" if value is None else self.format(value)

    def shown_at(self, value: float | None, baseline: float | None) -> str:
        """What a table shows at some k: the change against the baseline (`delta_title`) or the value."""
        if self.delta_title is None:
            return self.shown(value)
        return "n/a" if value is None or baseline is None else f"{value - baseline:+.2f}"

    def at_chance(self, value: float, chance: float) -> bool:
        """Whether `value` is at the chance level or worse, by the metric's direction."""
        return value <= chance if self.higher_is_better else value >= chance

    @property
    def k2_title(self) -> str:
        return f"{self.delta_title or self.title}@k₂"


_METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Add a metric; re-declaring a name needs `replace=True`, so a typo never shadows a built-in."""
    return _METRICS.add(metric.name, metric, replace=replace)


def get_metric(name: str) -> Metric:
    return _METRICS.get(name)


def registered_metrics() -> list[str]:
    return _METRICS.names()


def _score(value: float) -> str:
    return f"{value:.1f}"


def _share(value: float) -> str:
    return f"{value:.0%}"


LOG10_PPL = register_metric(
    Metric(
        name="log10_ppl",
        title="PPL",
        description="reference perplexity: the unmasked model's PPL of the masked model's output (log10)",
        higher_is_better=False,
        format=format_ppl,
        tolerance=0.1,
        tolerance_flag="--can-baseline-log10-atol",
        delta_title="Δlog10 PPL",
        point_title="ref PPL",
        stage1=Rule("ratio_at_least", "stage1_ppl_ratio"),
        stage2=Rule("delta_at_least", "stage2_log10_ppl_ratio"),
        stage2_required=True,
        needs_generation=False,
    )
)
SELF_LOG10_PPL = register_metric(
    Metric(
        name="self_log10_ppl",
        title="self PPL",
        description="the masked model's perplexity of its own output (log10)",
        higher_is_better=False,
        format=format_ppl,
        in_tables=False,
        in_curves=False,
    )
)
CLIP = register_metric(
    Metric(
        name="clip",
        title="CLIP",
        description="CLIP score of (image, caption), 100·max(cos, 0), against a chance level of captions scored "
        "with the other categories' images",
        higher_is_better=True,
        format=_score,
        tolerance=2.0,
        tolerance_flag="--can-baseline-clip-atol",
        chance_title="chance",
        stage1=Rule("fraction_at_most", "stage1_clip_fraction"),
        stage2=Rule("at_chance"),
    )
)
DEGENERATE_RATE = register_metric(
    Metric(
        name="degenerate_rate",
        title="degenerate",
        description="share of outputs that are no language: empty, one token repeated, a loop, word salad",
        higher_is_better=False,
        format=_share,
        stage2=Rule("at_least", "stage2_degenerate_rate"),
        in_tables=False,
    )
)
VQA_ACCURACY = register_metric(
    Metric(
        name="vqa_accuracy",
        title="accuracy",
        description="share of questions about the image answered right (the true answer named, no other; the vqa "
        "probe)",
        higher_is_better=True,
        format=_share,
        tolerance=0.05,
        tolerance_flag="--can-baseline-accuracy-atol",
        chance_title="chance acc.",
        stage1=Rule("fraction_at_most", "stage1_accuracy_fraction"),
        stage2=Rule("at_chance"),
    )
)
