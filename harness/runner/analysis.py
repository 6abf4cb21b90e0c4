"""One curve analysed: its two thresholds, the controls at k₂, and where the critical neurons live.

A collapse counts as a finding only if the controls do not collapse (README, *Science defaults*): k random neurons
of the same site (several seeds) and the CAN set replaced by its mean activation, both at k₂. The layer breakdown
of the CAN set at k₂ is the paper's localisation finding ("down_proj of the language model, early layers"); when
several sites are ranked together (`lm.down_proj+lm.gate_proj`) it is also broken down by site."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from harness.core import progress
from harness.core.labels import DEFAULT_RANKING, curve_label
from harness.models.sites import site_names
from harness.runner.curve import CollapseCurve, format_curve
from harness.runner.experiment import CollapsePoint, Experiment
from harness.runner.probe import shown_probe
from harness.science.ablation import Intervention
from harness.science.metric_registry import Metric, get_metric
from harness.science.threshold_search import ThresholdSearch


@dataclass(frozen=True)
class ControlOutcome:
    """One control measured at the curve's k₂: its stage and its metrics (as the curve's points carry them)."""

    intervention: str
    k: int
    stage: int
    metrics: dict[str, float | None]


@dataclass(frozen=True)
class CurveAnalysis:
    model: str
    site: str
    category: str
    search: ThresholdSearch
    points: dict[int, CollapsePoint] = field(repr=False)
    controls: list[ControlOutcome]
    layers: dict[str, dict[int, int]]  # site → layer → how many of the top-k₂ neurons sit there (empty: no k₂)
    ranking: str = DEFAULT_RANKING  # RankingOptions.label of the experiment
    probe: str = "captioning"  # the probe its points were observed through (harness.runner.probe)

    @property
    def label(self) -> str:
        return curve_label(self.model, self.site, self.category, self.ranking, probe=shown_probe(self.probe))

    @property
    def controls_hold(self) -> bool:
        """No control reaches complete collapse (vacuously true when there is no k₂ to control)."""
        return all(control.stage < 2 for control in self.controls)

    @property
    def finding(self) -> bool:
        """A complete collapse that the controls do not reproduce."""
        return self.search.k2 is not None and self.controls_hold

    def to_row(self) -> dict:
        """Plain data for the reports: thresholds, every evaluated stage, the metrics at k₂, controls, layers."""
        baseline = self.points[0]
        at_k2 = self.points.get(self.search.k2) if self.search.k2 is not None else None
        return {
            "model": self.model,
            "site": self.site,
            "category": self.category,
            "ranking": self.ranking,
            "probe": self.probe,
            "search": self.search.mode,
            "search_parallel": self.search.parallel,
            "k_max": self.search.k_max,
            "k1": self.search.k1,
            "k2": self.search.k2,
            "evaluations": self.search.evaluations,
            "passes": [list(ks) for ks in self.search.rounds],  # the ks each batched pass evaluated together
            "rechecked": list(self.search.rechecked),
            "stages": sorted(self.search.stages.items()),
            "monotone": self.search.monotone,
            "violations": self.search.violations,
            "n_samples": baseline.n_samples,
            "baselines": baseline.metrics,  # every metric at k = 0
            "baseline_chance": baseline.chance,
            "at_k2": None if at_k2 is None else at_k2.metrics,
            "controls": [dataclasses.asdict(control) for control in self.controls],
            "controls_hold": self.controls_hold,
            "finding": self.finding,
            "layers": {
                site: {str(layer): n for layer, n in counts.items()} for site, counts in self.layers.items()
            },
            "options": baseline.options,
            "provenance": baseline.provenance,
            "points": [self.points[k].to_row() for k in sorted(self.points)],  # captions at every evaluated k
        }

    def table(self) -> str:
        """The evaluated curve, then the controls: what an assertion failure shows."""
        lines = [format_curve(self.points.values())]
        baselines = self.points[0].metrics if 0 in self.points else {}
        for control in self.controls:
            shown = ", ".join(
                f"{metric.delta_title or metric.title} {metric.shown_at(value, baselines.get(metric.name))}"
                for metric, value in _shown(control.metrics)
            )
            lines.append(f"control at k={control.k}: {control.intervention}: stage {control.stage}, {shown}")
        return "\n".join(lines)


def analyse_curve(
    experiment: Experiment,
    site: str,
    category: str,
    *,
    curve: CollapseCurve | None = None,
) -> CurveAnalysis:
    """Search k₁ and k₂ by the experiment's settings (search mode, k_max) on `curve`, reusing the points it holds
    (a fresh curve if None); at k₂, measure the settings' `control_seeds` random-k controls (one batched pass) and
    the mean-ablated CAN set. Other settings: `analyse_curve(experiment.with_settings(k_max=…), …)`. The search
    measures what each stage needs; k₁ and k₂, which the tables show, are then measured in full (a text model's
    continuations)."""
    curve = curve or CollapseCurve(experiment, site, category)
    search = curve.search()
    shown = [k for k in (search.k1, search.k2) if k is not None and not curve.points[k].generated]
    if shown:
        with progress.task(f"k₁, k₂ of {curve.label} with generations") as task:
            curve.measured_many(shown)
            task.step(steps=len(shown))
    points = {k: curve.points[k] for k in search.stages}
    controls, layers = [], {}
    if search.k2 is not None:
        k2 = search.k2
        seeds = range(experiment.settings.control_seeds)
        interventions = [Intervention(selection="random", seed=seed) for seed in seeds]
        interventions.append(Intervention(ablation="mean"))
        with progress.task(f"controls at k₂ = {k2} of {curve.label} (the random-k ones in one pass)") as task:
            measured = experiment.measure_many(site, category, [(k2, i) for i in interventions])
            for intervention, point in zip(interventions, measured, strict=True):
                controls.append(ControlOutcome(intervention.label, k2, point.stage, point.metrics))
            task.step("stages " + ", ".join(str(point.stage) for point in measured), steps=len(measured))
        layers = neurons_by_site_and_layer(experiment, site, category, k2)
    ranking = experiment.settings.ranking.label
    return CurveAnalysis(
        experiment.name, site, category, search, points, controls, layers, ranking, experiment.probe.name
    )


def _shown(metrics: dict[str, float | None]) -> list[tuple[Metric, float | None]]:
    """The metrics tables show (harness.science.metric_registry), in declaration order, with their values."""
    return [(get_metric(name), value) for name, value in metrics.items() if get_metric(name).in_tables]


def neurons_by_site_and_layer(experiment: Experiment, site: str, category: str, k: int) -> dict[str, dict]:
    """site → layer → how many of the ranked top-k sit there; every site of a joint ranking appears, even at 0."""
    chosen = experiment.site(site).neurons(experiment.selection(site, category, k, Intervention()))
    counts: dict[str, dict[int, int]] = {part: {} for part in site_names(site)}
    for (part, layer), count in sorted(Counter((neuron.site, neuron.layer) for neuron in chosen).items()):
        counts[part][layer] = count
    return counts
