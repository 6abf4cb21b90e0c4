"""One collapse experiment: a probe (what the model is given and how its output is observed,
harness.runner.probe) composed with a ranking and the masked measurement — the ranking, the masked points and
their records, whatever the model is given.

harness.runner.session.HarnessSession, which the pytest plugin keeps as a session fixture, owns what is expensive
and shared (loaded models, probes, CLIP scorers, data, rankings); harness.runner.curve.CollapseCurve holds a
curve's points and searches its thresholds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from harness.core.code_fingerprint import code_fingerprint
from harness.core.metrics import require_finite
from harness.core.recorded import MEASUREMENT, RANKING, RESULTS, digest_of, recorded, tag_of
from harness.core.versions import library_versions
from harness.models.loading import LoadedModel
from harness.models.sites import AnySite, resolve_any_site
from harness.runner.probe import Masking, Observation, Probe
from harness.runner.ranking_cache import RankingCache
from harness.runner.settings import HarnessSettings, search_parallel_for
from harness.science.ablation import Intervention, mean_activations, random_selection
from harness.science.metric_registry import LOG10_PPL, get_metric
from harness.science.ranking import Ranking, importances
from harness.science.ranking_options import RankingOptions

MAX_REPORTED_NEURONS = 64
TOP_K_ZERO = Intervention()  # the experiment itself: zero the ranking's top-k


@dataclass(frozen=True)
class CollapsePoint:
    """One evaluated (model, site, category, k): the row every report and table is built from. Its metrics are
    the experiment's declared ones (harness.science.metric_registry), each a mean over the category's samples;
    None where it was not measured (nothing generated)."""

    model: str
    site: str
    category: str
    k: int
    probe: str  # how the model was given the category and observed (harness.runner.probe)
    n_samples: int  # images, or a text's windows
    metrics: dict[str, float | None]
    baselines: dict[str, float | None]  # the same metrics at k = 0
    chance: dict[str, float | None]  # the chance level of each metric that has one, at this k
    baseline_chance: dict[str, float | None]  # … and at k = 0
    stage: int
    generated: bool  # outputs were generated at this point, or only what its stage needs was measured
    captions: list[str]
    masked_neurons: list[tuple[str, int, int, float | None]]  # (site, layer, channel, CAN score) of the first ≤ 64
    mask_modes: list[str]
    intervention: str  # Intervention.label: the experiment (top-k) or a control
    ranking: str  # RankingOptions.label: how the top-k were chosen
    ranking_key: str | None
    # every setting the point depends on (harness.core.recorded: rankings and measurements), and the data's digest:
    # what a baseline compares
    options: dict = field(default_factory=dict)
    # what computed it: code, libraries, checkpoint, weights, device (recorded, shown when a baseline moved)
    provenance: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return asdict(self)

    @property
    def log10_ppl_ratio(self) -> float:
        """log10(PPL_k / PPL₀) of the reference PPL, the metric every experiment measures."""
        return self.metrics[LOG10_PPL.name] - self.baselines[LOG10_PPL.name]


class Experiment:
    """Measures collapse points on one loaded model through one probe, ranked one way: the ranking, the masked
    points and their records. Experiments of the same probe under other rankings or measurement settings
    (`with_settings`) share the probe, and with it the baselines and everything computed from the data."""

    def __init__(
        self,
        probe: Probe,
        settings: HarnessSettings,
        rankings: RankingCache,
        siblings: dict[HarnessSettings, Experiment] | None = None,
    ):
        self.probe, self.settings, self.rankings = probe, settings, rankings
        self.loaded: LoadedModel = probe.loaded
        self._siblings = siblings if siblings is not None else {}
        self._siblings.setdefault(settings, self)
        self._rankings: dict[tuple[str, str], Ranking] = {}
        self._sites: dict[str, AnySite] = probe.memo.setdefault("sites", {})
        self._means: dict[tuple[str, str, str], torch.Tensor] = probe.memo.setdefault("means", {})

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.probe.metrics

    def site(self, name: str) -> AnySite:
        """A site, or several joined by '+' (ranked together as one pool)."""
        if name not in self._sites:
            self._sites[name] = resolve_any_site(self.loaded, name)
        return self._sites[name]

    def with_ranking(self, options: RankingOptions) -> Experiment:
        """The experiment of this model and probe with neurons ranked another way."""
        return self.with_settings(ranking=options)

    def with_settings(self, **changes: object) -> Experiment:
        """This experiment under other settings that leave what its probe holds valid: another ranking, other
        stage thresholds, or other measurement settings (k range, search, controls, mask mode); one experiment
        per distinct settings, on the same probe. A change to what the probe's data and baselines were computed
        with (caption length, dtype, data, CLIP model) needs a session with those settings: it is refused, naming
        the field, so that no record can claim a setting the measurement did not use."""
        fixed = sorted(set(changes) - shareable_fields())
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} cannot change on a loaded experiment (what {self.name}'s probe holds "
                f"depends on it); start a HarnessSession with those settings. Changeable here: "
                f"{', '.join(sorted(shareable_fields()))}"
            )
        settings = replace(self.settings, **changes)
        if settings not in self._siblings:
            self._siblings[settings] = Experiment(self.probe.with_settings(settings), settings, self.rankings,
                                                  self._siblings)  # fmt: skip
        return self._siblings[settings]

    # -- the probe's data and observations --------------------------------------------------------------------
    def samples(self, category: str) -> Sequence[object]:
        return self.probe.samples(category)

    def ranking_data(self, category: str):
        return self.probe.ranking_data(category)

    def data_record(self, category: str) -> dict[str, object]:
        return self.probe.data_record(category)

    def baseline(self, category: str) -> Observation:
        """The unmasked model on `category` (computed once, by the probe)."""
        return self.probe.baseline(category)

    def means(self, observed: Observation, where: str) -> dict[str, float | None]:
        """Each of the probe's metrics as a mean over the samples (None where it was not measured), checked
        finite."""
        means: dict[str, float | None] = {}
        for name in self.metrics:
            values = observed.values.get(name)
            mean = None if values is None else _mean(values)
            means[name] = None if mean is None else require_finite(mean, f"{get_metric(name).title} of {where}")
        return means

    # -- ranking ----------------------------------------------------------------------------------------------
    def ranking(self, site_name: str, category: str) -> Ranking:
        key = (site_name, category)
        if key not in self._rankings:
            site = self.site(site_name)
            self._rank_together([part.name for part in site.parts], category)
            if key not in self._rankings:  # a joint site: each neuron's score depends on its own site only
                parts = [self._rankings[part.name, category] for part in site.parts]
                scores = torch.cat([part.scores.reshape(-1) for part in parts]).reshape(site.score_shape)
                self._rankings[key] = Ranking(site_name, scores, key="+".join(part.key for part in parts))
        return self._rankings[key]

    def _rank_together(self, site_names: list[str], category: str) -> None:
        """Rank the sites not ranked yet, from the cache or computed in the same passes (a joint site's parts)."""
        todo = [name for name in site_names if (name, category) not in self._rankings]
        if not todo:
            return
        sites = [self.site(name) for name in todo]
        inputs, targets = self.ranking_data(category)
        results = self.rankings.load_or_compute_many(
            [
                (self.ranking_inputs(name, category), site.score_shape)
                for name, site in zip(todo, sites, strict=True)
            ],
            lambda missing: importances(
                self.loaded,
                [sites[index] for index in missing],
                inputs,
                targets,
                options=self.settings.ranking,
                batch_size=self.settings.batch_size,
            ),
        )
        for name, (scores, cache_key) in zip(todo, results, strict=True):
            self._rankings[name, category] = Ranking(site=name, scores=scores, key=cache_key)

    def mean_activations(self, site_name: str, category: str) -> torch.Tensor:
        """Mean activation of each neuron over the ranking's inputs, targets and positions (mean ablation), in
        the shape of the site's scores."""
        key = (site_name, category, self.settings.ranking.positions)
        if key not in self._means:
            site = self.site(site_name)
            parts = [
                mean_activations(
                    self.loaded,
                    part,
                    *self.ranking_data(category),
                    positions=self.settings.ranking.positions,
                    batch_size=self.settings.batch_size,
                )
                for part in site.parts
            ]
            self._means[key] = torch.cat([part.reshape(-1) for part in parts]).reshape(site.score_shape)
        return self._means[key]

    def selection(self, site_name: str, category: str, k: int, intervention: Intervention) -> torch.Tensor:
        """Flat indices of the k neurons `intervention` switches off, in rank order for CAN."""
        if intervention.selection == "random":
            return random_selection(self.site(site_name), k, intervention.seed)
        return self.ranking(site_name, category).top_k(k)

    def ranking_inputs(self, site_name: str, category: str) -> dict[str, object]:
        """Everything a ranking depends on, the cache key is a hash of exactly this: the code and libraries, the
        model's weights, every setting tagged as changing rankings, the site and the data's content."""
        return {
            **self.identity(),
            "model": self.name,
            "site": site_name,
            "category": category,
            **self.settings_record((RANKING,)),
            "data": self.data_record(category),
        }

    def settings_record(self, scopes: Collection[str]) -> dict[str, object]:
        """The model spec's and the settings' fields in `scopes` that this kind of experiment and its ranking
        method read (their tags say which, harness.core.recorded), with the values resolved at load time."""
        loaded = self.loaded
        resolved = {
            "device": loaded.device.type,  # cuda:0 and cuda:1 compute alike
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "search_parallel": search_parallel_for(self.settings, loaded.device),
            **self.probe.resolved_settings(),
        }
        spec = recorded(loaded.spec, scopes)
        reads = self.settings.ranking.method_declaration.reads
        settings = recorded(self.settings, scopes, kind=self.probe.name, reads=reads, resolved=resolved)
        clash = set(spec) & set(settings)
        if clash:
            raise TypeError(f"model spec and settings fields share record names: {sorted(clash)}")
        return {**spec, **settings}

    def options_record(self, category: str) -> dict[str, object]:
        """What a point of `category` depends on and a baseline compares: every setting that changes results,
        and the digest of the data (which images or text, byte for byte)."""
        return {**self.settings_record(RESULTS), "data": digest_of(self.data_record(category))}

    def identity(self) -> dict[str, object]:
        """What computes the results: the harness's code, the libraries, and the model's checkpoint and weights."""
        return {
            "code": code_fingerprint(),
            **library_versions(),
            "checkpoint": self.loaded.checkpoint_id,
            "weights": self.loaded.weights_digest,
        }

    def provenance_record(self) -> dict[str, object]:
        """What a point was computed by, recorded and never compared: the identity, and the exact device."""
        return {**self.identity(), "device_used": str(self.loaded.device)}

    # -- measurement ------------------------------------------------------------------------------------------
    def measure(
        self,
        site_name: str,
        category: str,
        k: int,
        intervention: Intervention = TOP_K_ZERO,
        *,
        stage_only: bool = False,
    ) -> CollapsePoint:
        """Mask the top-k neurons of `site_name` (ranked on `category` by the configured method), or a control's k
        neurons, and measure the captions. `stage_only`: what the stage needs, no more (see `observe`)."""
        site = self.site(site_name)
        k = site.check_k(k)
        if k == 0:
            return self._point(site_name, category, 0, intervention, self.baseline(category), None, [])
        chosen = self.selection(site_name, category, k, intervention)
        values = self.mean_activations(site_name, category) if intervention.ablation == "mean" else None
        masking = Masking(site, (chosen,), values, self.settings.mask_mode)
        (observed,) = self.probe.observe(category, masking, stage_only=stage_only)
        return self._point(site_name, category, k, intervention, observed, chosen, sorted(masking.modes))

    def measure_many(
        self,
        site_name: str,
        category: str,
        variants: Sequence[tuple[int, Intervention]],
        *,
        stage_only: bool = False,
    ) -> list[CollapsePoint]:
        """`measure` of several (k, intervention) variants of one site and category: the ks of one threshold search
        pass, or a curve's controls at k₂. The zero-ablation ones share one batched pass, each image once per
        variant, with per-row masks (harness.models.row_masks); a row equals its variant measured alone up to float
        rounding (the batches are larger). The others are measured one by one."""
        site = self.site(site_name)
        variants = [(site.check_k(k), intervention) for k, intervention in variants]
        together = [index for index, (k, i) in enumerate(variants) if i.ablation == "zero" and k > 0]
        points: dict[int, CollapsePoint] = {}
        if len(together) > 1:
            chosen = [self.selection(site_name, category, *variants[index]) for index in together]
            masking = Masking(site, tuple(chosen), mode=self.settings.mask_mode)
            observed = self.probe.observe(category, masking, stage_only=stage_only)
            for index, neurons, observation in zip(together, chosen, observed, strict=True):
                k, intervention = variants[index]
                points[index] = self._point(site_name, category, k, intervention, observation, neurons, ["hook"])
        return [
            points[index]
            if index in points
            else self.measure(site_name, category, k, intervention, stage_only=stage_only)
            for index, (k, intervention) in enumerate(variants)
        ]

    def _point(
        self,
        site_name: str,
        category: str,
        k: int,
        intervention: Intervention,
        observed: Observation,
        chosen: torch.Tensor | None,
        modes: list[str],
    ) -> CollapsePoint:
        """The CollapsePoint of an observation: metrics against the baseline, the stage, the masked neurons."""
        site, baseline = self.site(site_name), self.baseline(category)
        neurons, ranking_key = [], None
        if chosen is not None:
            shown = chosen[:MAX_REPORTED_NEURONS]
            ranking = self._rankings.get((site_name, category))
            scores = ranking.scores.reshape(-1)[shown].tolist() if ranking is not None else [None] * len(shown)
            neurons = [(n.site, n.layer, n.channel, s) for n, s in zip(site.neurons(shown), scores, strict=True)]
            ranking_key = ranking.key if intervention.selection == "ranked" else None
        where = f"{self.name} {site_name} {category}"
        values = self.means(observed, f"{where} k={k}")
        baselines = self.means(baseline, f"{where} k=0")
        captions = observed.captions
        return CollapsePoint(
            model=self.name,
            site=site_name,
            category=category,
            k=k,
            probe=self.probe.name,
            n_samples=len(self.samples(category)),
            metrics=values,
            baselines=baselines,
            chance=dict(observed.chance),
            baseline_chance=dict(baseline.chance),
            stage=self.probe.criterion().stage(k, values, baselines, observed.chance),
            generated=captions is not None,
            captions=[] if captions is None else [c.text for c in captions],
            masked_neurons=neurons,
            mask_modes=list(modes),
            intervention=intervention.label,
            ranking=self.settings.ranking.label,
            ranking_key=ranking_key,
            options=self.options_record(category),
            provenance=self.provenance_record(),
        )


@functools.cache
def shareable_fields() -> frozenset[str]:
    """The settings fields an experiment's siblings may change on one probe: the nested rankings and stage
    thresholds, and every measurement setting the unmasked baseline is not measured with (harness.core.recorded
    tags)."""
    shareable = set()
    for setting in dataclasses.fields(HarnessSettings):
        tag = tag_of(HarnessSettings, setting)
        if tag.nested or (tag.scope == MEASUREMENT and not tag.per_session):
            shareable.add(setting.name)
    return frozenset(shareable)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)
