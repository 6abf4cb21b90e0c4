"""The collapse curve of one (model, site, category): the points measured so far, and how to show them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tabulate import tabulate

from harness.core import progress
from harness.core.labels import curve_label
from harness.runner.experiment import TOP_K_ZERO, CollapsePoint, Experiment
from harness.runner.probe import shown_probe
from harness.runner.settings import search_parallel_for
from harness.science.metric_registry import get_metric
from harness.science.threshold_search import ThresholdSearch, search_thresholds

STAGE_NAMES = {0: "intact", 1: "degraded", 2: "collapsed"}


class CollapseCurve:
    """Points of one (model, site, category), measured on demand and kept for the session."""

    def __init__(self, experiment: Experiment, site: str, category: str):
        self.experiment, self.site, self.category = experiment, site, category
        self.points: dict[int, CollapsePoint] = {}
        self.on_point: Callable[[CollapsePoint], None] | None = None  # the plugin records each measured point

    @property
    def model(self) -> str:
        return self.experiment.name

    @property
    def label(self) -> str:
        probe = shown_probe(self.experiment.probe.name)
        return curve_label(
            self.model, self.site, self.category, self.experiment.settings.ranking.label, probe=probe
        )

    def search(self, *, stage_only: bool = True) -> ThresholdSearch:
        """k₁ and k₂ of the curve by the settings' search (adaptive, or the papers' linear scan) up to their
        k_max, `search_parallel` ks in each batched pass, every point measured as far as its stage needs (a text
        model's continuations are not generated; `stage_only=False`: in full) and kept with the curve's other
        points, whose ks it reuses. Another search or range: a curve of `experiment.with_settings(search=…,
        k_max=…)`."""
        settings, site = self.experiment.settings, self.experiment.site(self.site)
        limit = site.check_k(min(settings.k_max, site.size))
        parallel = search_parallel_for(settings, self.experiment.loaded.device)
        title = f"{settings.search} search of {self.label} (k ≤ {limit}, {parallel} k a pass)"
        with progress.task(title) as task:

            def stages_at(ks: Sequence[int]) -> list[int]:
                measured = self.measured_many(ks, stage_only=stage_only)
                last = ", ".join(f"k={p.k} stage {p.stage} Δlog10 PPL {p.log10_ppl_ratio:+.2f}" for p in measured)
                task.step(f"last: {last}", steps=len(measured))
                return [point.stage for point in measured]

            return search_thresholds(settings.search, stages_at, limit, parallel)

    def measure(self, k: int) -> CollapsePoint:
        """The point at k, measured once per session and reported to `on_point` every time it is asked for."""
        point = self.measured(k)
        if self.on_point is not None:
            self.on_point(point)
        return point

    def measured(self, k: int) -> CollapsePoint:
        """The point at k, measured once per session, not reported: how the threshold search shares the grid's
        points (and the grid the search's) without turning searched points into grid rows."""
        return self.measured_many([k])[0]

    def measured_many(self, ks: Sequence[int], *, stage_only: bool = False) -> list[CollapsePoint]:
        """`measured` of several ks, those not measured yet in one batched pass (a threshold search's pass).
        `stage_only`: a point measured only as far as its stage needs will do (`search`); without
        it such a point is measured again in full."""
        missing = [
            k for k in dict.fromkeys(ks) if k not in self.points or not (stage_only or self.points[k].generated)
        ]
        if missing:
            variants = [(k, TOP_K_ZERO) for k in missing]
            measured = self.experiment.measure_many(self.site, self.category, variants, stage_only=stage_only)
            self.points.update(zip(missing, measured, strict=True))
        return [self.points[k] for k in ks]

    def point(self, k: int) -> CollapsePoint:
        if k not in self.points:
            measured = ", ".join(map(str, sorted(self.points))) or "none"
            raise KeyError(f"k={k} has not been measured on {self.label} (measured: {measured})")
        return self.points[k]

    def table(self) -> str:
        return format_curve(self.points.values())


def row_label(row: dict, separator: str = " / ") -> str:
    """The label of a point's or an analysis' row (as `CollapseCurve.label` names the curve)."""
    probe = shown_probe(row["probe"]) if "probe" in row else None
    return curve_label(row["model"], row["site"], row["category"], row.get("ranking"), separator, probe=probe)


def format_curve(points) -> str:
    """A small table of a curve, for failure messages and `--can-show-curves`: each metric the points carry that
    curves show (harness.science.metric_registry), with its change against the baseline and its chance level
    where it declares them."""
    points = sorted(points, key=lambda p: p.k)
    metrics = [get_metric(name) for name in dict.fromkeys(n for p in points for n in p.metrics)]
    metrics = [metric for metric in metrics if metric.in_curves]
    headers = ["k"]
    for metric in metrics:
        headers += [metric.point_title or metric.title] + [
            t for t in (metric.delta_title, metric.chance_title) if t
        ]
    rows = []
    for p in points:
        row = [p.k]
        for metric in metrics:
            value = p.metrics.get(metric.name)
            missing = "not generated" if metric.needs_generation and not p.generated else "n/a"
            row.append(missing if value is None else metric.format(value))
            if metric.delta_title:
                row.append(metric.shown_at(value, p.baselines.get(metric.name)))
            if metric.chance_title:
                row.append(metric.shown(p.chance.get(metric.name)))
        first = p.captions[0] if p.captions else ""
        rows.append([*row, f"{p.stage} {STAGE_NAMES[p.stage]}", first[:40] + "…" if len(first) > 40 else first])
    return tabulate(rows, headers=[*headers, "stage", "first caption"], tablefmt="simple")
