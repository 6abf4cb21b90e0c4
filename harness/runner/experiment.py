"""One collapse experiment end to end: baseline, ranking, masked evaluation at k, stage, threshold search.

`Experiment` measures points on one loaded model; what the model is given and how its output is observed is its
kind's own (harness.runner.image_experiment, harness.runner.text_experiment).
harness.runner.session.HarnessSession, which the pytest plugin keeps as a session fixture, owns what is expensive
and shared (loaded models, CLIP scorers, images, rankings).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import torch

from harness.core import progress
from harness.core.code_fingerprint import code_fingerprint
from harness.core.metrics import require_finite
from harness.core.recorded import MEASUREMENT, RANKING, RESULTS, digest_of, recorded, tag_of
from harness.core.versions import library_versions
from harness.models.captioning import Caption, generate_captions
from harness.models.image_encoding import EncodedImage
from harness.models.loading import LoadedModel
from harness.models.masking import JointMask, NeuronMask, mask_neurons
from harness.models.prompt_prefix import PromptPrefix
from harness.models.sites import AnySite, resolve_any_site
from harness.runner.ranking_cache import RankingCache
from harness.runner.settings import HarnessSettings, search_parallel_for
from harness.science.ablation import Intervention, mean_activations, random_selection
from harness.science.metric_registry import LOG10_PPL, get_metric
from harness.science.ranking import Ranking, importances
from harness.science.ranking_options import RankingOptions
from harness.science.stages import Criterion
from harness.science.threshold_search import ThresholdSearch, search_thresholds

MAX_REPORTED_NEURONS = 64
TOP_K_ZERO = Intervention()  # the experiment itself: zero the ranking's top-k


@dataclass(frozen=True)
class Observation:
    """What the model (masked or not) does on one category. Unmasked, it is the k = 0 point, and a VLM's captions
    are its ranking's targets."""

    # generated: captions, or a text model's continuations; None: not generated, because the stage does not need
    # them (a text model's point evaluated only for a threshold search, harness.runner.text_experiment)
    captions: list[Caption] | None
    reference_nll: list[float]  # teacher-forced under the unmasked model, per sample (nats)
    # per metric the experiment measured (harness.science.metric_registry): one value per sample
    values: dict[str, list[float]]
    chance: dict[str, float | None] = field(default_factory=dict)  # per metric with a chance level: its level


@dataclass(frozen=True)
class CollapsePoint:
    """One evaluated (model, site, category, k): the row every report and table is built from. Its metrics are
    the experiment's declared ones (harness.science.metric_registry), each a mean over the category's samples;
    None where it was not measured (nothing generated)."""

    model: str
    site: str
    category: str
    k: int
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


@dataclass
class ModelState:
    """What every experiment on one loaded model shares, whatever its ranking: the baselines, resolved sites, mean
    activations, CLIP image features, image encodings and prompt prefixes, and the experiment of each ranking.
    Rankings are not in it: each experiment holds its own."""

    baselines: dict[str, Observation] = field(default_factory=dict)
    sites: dict[str, AnySite] = field(default_factory=dict)
    means: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)  # (site, category, positions)
    clip_features: dict[str, torch.Tensor] = field(default_factory=dict)  # per category
    other_clip_features: dict[str, torch.Tensor] = field(default_factory=dict)  # the other categories'
    encoded_images: dict[str, list[EncodedImage]] = field(default_factory=dict)
    prefixes: dict[str, list[PromptPrefix]] = field(default_factory=dict)  # one category at a time
    experiments: dict[HarnessSettings, Experiment] = field(default_factory=dict)


class Experiment(ABC):
    """Measures collapse points on one loaded model, ranked one way: the ranking, the masked points, the threshold
    search and their records, whatever the model is given. What the model is given and how its output is observed
    is each kind's own: harness.runner.image_experiment.ImageExperiment (a vision-language model captioning images)
    and harness.runner.text_experiment.TextExperiment (a causal LM on texts). What does not depend on the ranking
    lives in its ModelState, shared with the model's experiments of other rankings."""

    kind: ClassVar[str]  # which kind-tagged settings it reads ("image", "text"; harness.core.recorded)
    metrics: ClassVar[tuple[str, ...]]  # the metrics it measures (harness.science.metric_registry), in order

    def __init__(
        self, loaded: LoadedModel, settings: HarnessSettings, rankings: RankingCache, state: ModelState | None
    ):
        self.loaded, self.settings, self.rankings = loaded, settings, rankings
        self.state = state if state is not None else ModelState()
        self.state.experiments.setdefault(settings, self)
        self._rankings: dict[tuple[str, str], Ranking] = {}

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    def site(self, name: str) -> AnySite:
        """A site, or several joined by '+' (ranked together as one pool)."""
        if name not in self.state.sites:
            self.state.sites[name] = resolve_any_site(self.loaded, name)
        return self.state.sites[name]

    def with_ranking(self, options: RankingOptions) -> Experiment:
        """The experiment of this model with neurons ranked another way (one per ranking, on the shared state)."""
        return self.with_settings(ranking=options)

    def with_settings(self, **changes: object) -> Experiment:
        """This model's experiment under other settings that leave what the shared state holds valid: another
        ranking, other stage thresholds, or other measurement settings (k range, search, controls, mask mode);
        one experiment per distinct settings, on the shared state. A change to what the state was computed with
        (caption length, dtype, data, CLIP model) needs a session with those settings: it is refused, naming the
        field, so that no record can claim a setting the measurement did not use."""
        fixed = sorted(set(changes) - shareable_fields())
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)} cannot change on a loaded experiment (what {self.name}'s shared state holds "
                f"depends on it); start a HarnessSession with those settings. Changeable here: "
                f"{', '.join(sorted(shareable_fields()))}"
            )
        settings = replace(self.settings, **changes)
        experiments = self.state.experiments
        if settings not in experiments:
            experiments[settings] = self._sibling(settings)
        return experiments[settings]

    @abstractmethod
    def _sibling(self, settings: HarnessSettings) -> Experiment:
        """An experiment on this model and state under `settings` (differing only where `with_settings` allows)."""

    # -- what the model is given, what it does (each kind of experiment its own) --------------------------------
    @abstractmethod
    def samples(self, category: str) -> Sequence[object]:
        """The model's inputs on `category`, one per row of its batches (images, or a text's openings)."""

    @abstractmethod
    def ranking_data(self, category: str) -> tuple[Sequence[object], list[Caption]]:
        """The inputs and teacher-forced targets the ranking loss (and mean ablation) is computed on."""

    @abstractmethod
    def data_record(self, category: str) -> dict[str, object]:
        """What identifies the data of `category` in a ranking's cache key."""

    @abstractmethod
    def observe(
        self, category: str, mask: NeuronMask | JointMask | None = None, *, stage_only: bool = False
    ) -> Observation:
        """What the model does on `category` under `mask` (None: unmasked). `stage_only`: no more than the
        stage reads."""

    @abstractmethod
    def observe_many(
        self, category: str, site: AnySite, neuron_sets: Sequence[torch.Tensor], *, stage_only: bool = False
    ) -> list[Observation]:
        """`observe` under each zero-ablation neuron set, in batched passes with per-row masks."""

    def clip_label(self) -> str | None:
        """The CLIP model that scores this experiment's captions, for its records; None: no CLIP score."""
        return None

    @abstractmethod
    def criterion(self) -> Criterion:
        """The stage criterion: which of this experiment's metrics it reads, under the settings' thresholds."""

    def means(self, observed: Observation, where: str) -> dict[str, float | None]:
        """Each declared metric's mean over the samples (None where it was not measured), checked finite."""
        means: dict[str, float | None] = {}
        for name in self.metrics:
            values = observed.values.get(name)
            mean = None if values is None else _mean(values)
            means[name] = None if mean is None else require_finite(mean, f"{get_metric(name).title} of {where}")
        return means

    def _captions(self, category: str, encoded_images: list[EncodedImage] | None = None) -> list[Caption]:
        return generate_captions(
            self.loaded,
            self.samples(category),
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.settings.batch_size,
            encoded_images=encoded_images,
        )

    def baseline(self, category: str) -> Observation:
        """The unmasked model on `category` (computed once)."""
        if category not in self.state.baselines:
            self.state.baselines[category] = self.observe(category)
        return self.state.baselines[category]

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
        if key not in self.state.means:
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
            self.state.means[key] = torch.cat([part.reshape(-1) for part in parts]).reshape(site.score_shape)
        return self.state.means[key]

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
            "clip_model": self.clip_label(),
            "search_parallel": search_parallel_for(self.settings, loaded.device),
        }
        spec = recorded(loaded.spec, scopes)
        settings = recorded(
            self.settings, scopes, kind=self.kind, method=self.settings.ranking.method, resolved=resolved
        )
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
        mask = mask_neurons(site, chosen, mode=self.settings.mask_mode, values=values)
        observed = self.observe(category, mask, stage_only=stage_only)
        return self._point(site_name, category, k, intervention, observed, chosen, sorted(mask.modes))

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
            observed = self.observe_many(category, site, chosen, stage_only=stage_only)
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
            n_samples=len(self.samples(category)),
            metrics=values,
            baselines=baselines,
            chance=dict(observed.chance),
            baseline_chance=dict(baseline.chance),
            stage=self.criterion().stage(k, values, baselines, observed.chance),
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

    def search(
        self,
        site_name: str,
        category: str,
        *,
        measure_many: Callable[[Sequence[int]], list[CollapsePoint]] | None = None,
    ) -> tuple[ThresholdSearch, dict[int, CollapsePoint]]:
        """k₁ and k₂ of one curve by the settings' search (adaptive, or the papers' linear scan) up to their
        k_max, `search_parallel` ks in each batched pass, every point measured as far as its stage needs (a text
        model's continuations are not generated). `measure_many(ks)` replaces that measurement, e.g. by one that
        reuses points already measured. Another search or range: `with_settings(search=…, k_max=…)`."""
        mode = self.settings.search
        site = self.site(site_name)
        limit = site.check_k(min(self.settings.k_max, site.size))
        measure_many = measure_many or (
            lambda ks: self.measure_many(site_name, category, [(k, TOP_K_ZERO) for k in ks], stage_only=True)
        )
        parallel = search_parallel_for(self.settings, self.loaded.device)
        points: dict[int, CollapsePoint] = {}
        title = f"{mode} search of {self.name} / {site_name} / {category} (k ≤ {limit}, {parallel} k a pass)"
        with progress.task(title) as task:

            def stages_at(ks: Sequence[int]) -> list[int]:
                measured = measure_many(ks)
                points.update((point.k, point) for point in measured)
                last = ", ".join(f"k={p.k} stage {p.stage} Δlog10 PPL {p.log10_ppl_ratio:+.2f}" for p in measured)
                task.step(f"last: {last}", steps=len(measured))
                return [point.stage for point in measured]

            return search_thresholds(mode, stages_at, limit, parallel), points


@functools.cache
def shareable_fields() -> frozenset[str]:
    """The settings fields an experiment's siblings may change on one ModelState: the nested rankings and stage
    thresholds, and every measurement setting the unmasked baseline is not measured with (harness.core.recorded
    tags)."""
    shareable = set()
    for setting in dataclasses.fields(HarnessSettings):
        tag = tag_of(HarnessSettings, setting)
        if tag.nested or (tag.scope == MEASUREMENT and not tag.per_session):
            shareable.add(setting.name)
    return frozenset(shareable)


def set_slices(per_set: int, sets: int) -> list[slice]:
    """The rows of each neuron set in a set-major batch of `sets` × `per_set` rows."""
    return [slice(index * per_set, (index + 1) * per_set) for index in range(sets)]


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)
