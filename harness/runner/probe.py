"""Probes: what a model is given and how its output is observed — a kind of input, with its data, its prompts, the
data its ranking is computed on, one observation path for one or many masks, and the metrics it declares.

A probe is one registered class (`register_probe`); a model family names its default probe
(`Family.default_probe`), and a case may name another (`@pytest.mark.collapse_search(..., probe="vqa")`). The
experiment (harness.runner.experiment) composes a probe with a ranking and the masked measurement; nothing in it
knows images from texts.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from harness.core.named import Registry
from harness.models.captioning import Caption
from harness.models.masking import NeuronMask, mask_neurons
from harness.models.row_masks import mask_rows
from harness.models.sites import AnySite

if TYPE_CHECKING:
    from harness.models.families import Family
    from harness.models.loading import LoadedModel
    from harness.runner.data_sources import DataSources
    from harness.runner.session import HarnessSession
    from harness.runner.settings import HarnessSettings
    from harness.science.stages import Criterion


@dataclass(frozen=True)
class Observation:
    """What the model (masked or not) does on one category. Unmasked, it is the k = 0 point, and its outputs are
    the ranking's targets where the probe says so."""

    # generated outputs (captions, continuations, answers); None: not generated, because the stage does not need
    # them (a text model's point evaluated only for a threshold search)
    captions: list[Caption] | None
    reference_nll: list[float]  # teacher-forced under the unmasked model, per sample (nats)
    # per metric the probe measured (harness.science.metric_registry): one value per sample
    values: dict[str, list[float]]
    chance: dict[str, float | None] = field(default_factory=dict)  # per metric with a chance level: its level


class DataSet(Protocol):
    """A probe's data, by category: what its samples are made of, and what identifies them byte for byte."""

    @property
    def categories(self) -> list[str]: ...

    def content_hashes(self, category: str) -> list[str]: ...


@dataclass(frozen=True)
class Masking:
    """What one observation pass switches off: on `site`, one neuron set per variant (each variant a group of
    batch rows), with replacement values for a mean ablation; no variants: the unmasked model. One variant is
    applied by weight edits where the weights allow it, several by per-row hooks in one batched pass."""

    site: AnySite | None = None
    variants: tuple[torch.Tensor, ...] = ()
    values: torch.Tensor | None = None  # a mean ablation's replacement values (one variant only)
    mode: str = "auto"
    mask: NeuronMask | None = field(default=None, init=False, repr=False)  # a single variant's, checked now

    def __post_init__(self) -> None:
        if self.values is not None and len(self.variants) != 1:
            raise ValueError("replacement values (a mean ablation) apply to one neuron set at a time")
        if self.variants and self.site is None:
            raise ValueError("neuron sets need the site they belong to")
        if len(self.variants) == 1:  # built (and refused, naming the layer) before any work is spent
            mask = mask_neurons(self.site, self.variants[0], mode=self.mode, values=self.values)
            object.__setattr__(self, "mask", mask)

    @property
    def modes(self) -> list[str]:
        """How the neurons were switched off: by weight edits, hooks, or both (several variants: hooks)."""
        if self.mask is not None:
            return sorted(self.mask.modes)
        return ["hook"] if self.variants else []

    @property
    def count(self) -> int:
        """How many observations the pass yields: one per variant, one for the unmasked model."""
        return max(1, len(self.variants))

    def applied(self) -> AbstractContextManager:
        """The mask of a single variant, held around the whole pass (weight edits where possible); nothing for
        none or several (those go row by row, `chunk_mask`). Its `modes` say how it was applied."""
        return nullcontext() if self.mask is None else self.mask

    def chunk_mask(self, per_variant: int) -> Callable[[slice], AbstractContextManager] | None:
        """For several variants, the per-row mask of any slice of the pass's rows (variant-major, `per_variant`
        rows each); None otherwise."""
        if len(self.variants) < 2:
            return None
        rows = [neurons for neurons in self.variants for _ in range(per_variant)]
        return lambda part: mask_rows(self.site, rows[part])

    def slices(self, per_variant: int) -> list[slice]:
        """The rows of each variant in the pass."""
        return [slice(index * per_variant, (index + 1) * per_variant) for index in range(self.count)]


UNMASKED = Masking()


class Probe(ABC):
    """A kind of input on one loaded model: its data, prompts, ranking data, observation and metrics.

    Subclasses declare `name` (registered name, the kind that settings fields tagged with `kinds` name),
    `data` (which of the run's data it reads: "images" or "texts"), `metrics` (what it measures, in order) and
    `labelled` (whether curves name it: a family's own probe stays out of labels and baseline keys). They
    implement `samples`, `ranking_data`, `observe` and `criterion`; `baseline` is kept here."""

    name: ClassVar[str]
    data: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    labelled: ClassVar[bool] = True

    def __init__(
        self, loaded: LoadedModel, settings: HarnessSettings, sources: DataSources, session: HarnessSession
    ):
        self.loaded, self.settings, self.sources = loaded, settings, sources
        self._baselines: dict[str, Observation] = {}
        # what the experiments on this probe compute once (sites, mean activations)
        self.memo: dict[str, dict] = {}

    @classmethod
    def unsupported(cls, family: Family) -> str | None:
        """Why this probe cannot run on `family`'s models (None: it can): by default, they take no such data."""
        if cls.data in family.inputs:
            return None
        return f"{family.name} models take no {cls.data} (they take {', '.join(family.inputs)})"

    @classmethod
    def data_set(cls, sources: DataSources) -> DataSet:
        """The run's data this probe reads."""
        return sources.data_set(cls.data)

    @classmethod
    def categories(cls, sources: DataSources) -> list[str]:
        """The categories its cases run on (the run's selection, where it makes one)."""
        return sources.categories(cls.data)

    def data_record(self, category: str) -> dict[str, object]:
        """What identifies the data of `category` in a ranking's key and a point's record."""
        return {self.data: self.data_set(self.sources).content_hashes(category)}

    def resolved_settings(self) -> dict[str, object]:
        """The effective values of settings fields tagged `resolved` that this probe decides (the CLIP model)."""
        return {}

    @abstractmethod
    def samples(self, category: str) -> Sequence[object]:
        """The model's inputs on `category`, one per row of its batches."""

    @abstractmethod
    def ranking_data(self, category: str) -> tuple[Sequence[object], list[Caption]]:
        """The inputs and teacher-forced targets the ranking loss (and mean ablation) is computed on."""

    @abstractmethod
    def observe(
        self, category: str, masking: Masking = UNMASKED, *, stage_only: bool = False
    ) -> list[Observation]:
        """What the model does on `category` under each variant of `masking` (one observation each; one for the
        unmasked model), in one batched pass. `stage_only`: no more than the stage criterion reads."""

    @abstractmethod
    def criterion(self) -> Criterion:
        """The stage criterion: which of the probe's metrics it reads, under the settings' thresholds."""

    def with_settings(self, settings: HarnessSettings) -> Probe:
        """This probe under other measurement settings (stage thresholds, the k range: what
        Experiment.with_settings allows), sharing everything it has computed: baselines, encodings, memo."""
        if settings == self.settings:
            return self
        sibling = copy.copy(self)  # a shallow copy: the caches are the same objects
        sibling.settings = settings
        return sibling

    def baseline(self, category: str) -> Observation:
        """The unmasked model on `category` (computed once)."""
        if category not in self._baselines:
            (self._baselines[category],) = self.observe(category)
        return self._baselines[category]


def _builtin_probes() -> None:
    """The built-in probes register themselves when their package is first imported."""
    import harness.runner.probes  # noqa: F401


_PROBES: Registry[type[Probe]] = Registry("probe", _builtin_probes)


def register_probe(probe: type[Probe], *, replace: bool = False) -> type[Probe]:
    """Add a probe class under its `name` (usable as a class decorator); re-registering a name needs
    `replace=True`, so a typo never shadows a built-in."""
    return _PROBES.add(probe.name, probe, replace=replace)


def get_probe(name: str) -> type[Probe]:
    return _PROBES.get(name)


def shown_probe(name: str) -> str | None:
    """How labels and baseline keys name a curve's probe: by its name, unless it is a family's own probe."""
    return name if get_probe(name).labelled else None


def registered_probes() -> list[str]:
    return _PROBES.names()
