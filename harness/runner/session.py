"""What a pytest session (or a script) shares: loaded models, their probes, CLIP scorers, the run's data and the
rankings cache, and the experiment of each (model, probe), started on first use."""

from __future__ import annotations

import torch

from harness.core.errors import UnsupportedModelError
from harness.data.images import ImageSet
from harness.data.texts import TextSet
from harness.models.clip_score import ClipScorer
from harness.models.families import check_family_supported
from harness.models.loading import LoadedModel, load_model
from harness.models.registry import ClipSpec
from harness.runner.data_sources import DataSources
from harness.runner.experiment import Experiment
from harness.runner.probe import get_probe
from harness.runner.ranking_cache import RankingCache
from harness.runner.settings import HarnessSettings


class HarnessSession:
    """Loaded models, probes, CLIP scorers and data shared by all cases of a pytest session (or a script).

    A model that failed to load (missing weights, unsupported family), or a probe that failed to start on it (CLIP
    unavailable), is remembered, so the following cases fail or skip at once instead of trying again.
    """

    def __init__(
        self,
        settings: HarnessSettings,
        images: ImageSet | None = None,
        texts: TextSet | None = None,
        sources: DataSources | None = None,
    ):
        self.settings = settings
        self.sources = sources if sources is not None else DataSources(settings, images, texts)
        self.rankings = RankingCache(settings.cache_dir)
        self._loaded: dict[str, LoadedModel] = {}
        self._experiments: dict[tuple[str, str], Experiment] = {}
        self._failures: dict[tuple[str, str | None], Exception] = {}
        self._clips: dict[tuple[ClipSpec, torch.device], ClipScorer] = {}

    @property
    def images(self) -> ImageSet:
        return self.sources.images

    @property
    def texts(self) -> TextSet:
        return self.sources.texts

    def experiment(self, model_name: str, probe: str | None = None) -> Experiment:
        """The experiment of a registered model through `probe` (None: its family's own); raises
        ModelUnavailableError when its weights are absent, UnsupportedModelError when the probe cannot run on
        it."""
        loaded = self._remembered((model_name, None), lambda: self._load(model_name))
        name = probe or loaded.family.default_probe
        key = (model_name, name)
        if key not in self._experiments:
            self._experiments[key] = self._remembered(key, lambda: self._start(loaded, name))
        return self._experiments[key]

    def _remembered(self, key: tuple[str, str | None], start):
        """`start()`, once: an error it raises is remembered and re-raised unchanged, never swallowed."""
        if key in self._failures:
            raise self._failures[key]
        try:
            return start()
        except Exception as error:
            self._failures[key] = error
            raise

    def _load(self, model_name: str) -> LoadedModel:
        if model_name not in self._loaded:
            spec = self.settings.model_spec(model_name)
            check_family_supported(spec)
            self._loaded[model_name] = load_model(
                spec,
                cache_dir=self.settings.cache_dir,
                device=self.settings.device,
                dtype=self.settings.dtype,
                allow_download=self.settings.allow_download,
                device_map=self.settings.device_map_argument,
                max_memory=self.settings.max_memory,
                specs=self.settings.model_spec,
            )
        return self._loaded[model_name]

    def _start(self, loaded: LoadedModel, probe_name: str) -> Experiment:
        probe = get_probe(probe_name)
        reason = probe.unsupported(loaded.family)
        if reason is not None:
            raise UnsupportedModelError(f"{loaded.spec.name}: the {probe_name} probe cannot run on it: {reason}")
        return Experiment(probe(loaded, self.settings, self.sources, self), self.settings, self.rankings)

    def clip(self, spec: ClipSpec, device: torch.device) -> ClipScorer:
        """One CLIP scorer per (model, device), shared by every experiment on that device."""
        if (spec, device) not in self._clips:
            self._clips[spec, device] = ClipScorer(
                spec, cache_dir=self.settings.cache_dir, device=device, allow_download=self.settings.allow_download
            )
        return self._clips[spec, device]
