"""What a pytest session (or a script) shares: loaded models, CLIP scorers, images, texts and the rankings cache,
and the experiment of each model, started on first use."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch

from harness.core.store import ensure_built
from harness.data.images import ImageSet, scan_image_root
from harness.data.texts import TextSet, load_text_set
from harness.models.clip_score import ClipScorer
from harness.models.families import check_family_supported
from harness.models.loading import load_model
from harness.models.registry import ClipSpec
from harness.runner.experiment import Experiment
from harness.runner.image_experiment import ImageExperiment
from harness.runner.ranking_cache import RankingCache
from harness.runner.settings import HarnessSettings
from harness.runner.text_experiment import TextExperiment
from harness.zoo import WORLD_IMAGES


class HarnessSession:
    """Loaded models, CLIP scorers and images shared by all cases of a pytest session (or a script).

    A model that failed to load (missing weights, CLIP unavailable, unsupported family) is remembered, so the
    following cases of that model fail or skip at once instead of loading it again.
    """

    def __init__(self, settings: HarnessSettings, images: ImageSet | None = None, texts: TextSet | None = None):
        self.settings = settings
        self.rankings = RankingCache(settings.cache_dir)
        self._experiments: dict[str, Experiment] = {}
        self._failures: dict[str, Exception] = {}
        self._clips: dict[tuple[ClipSpec, torch.device], ClipScorer] = {}
        if images is not None:
            self.images = images
        if texts is not None:
            self.texts = texts

    @cached_property
    def images(self) -> ImageSet:
        """Every category under the image root (the others set the chance level of each evaluated one)."""
        return load_image_set(self.settings)

    @cached_property
    def texts(self) -> TextSet:
        """The texts text-only models are measured on."""
        return load_text_set(self.settings.texts)

    def experiment(self, model_name: str) -> Experiment:
        """The experiment for a registered model; raises ModelUnavailableError when its weights are absent."""
        if model_name in self._failures:
            raise self._failures[model_name]
        if model_name not in self._experiments:
            try:
                self._experiments[model_name] = self._start(model_name)
            except Exception as error:  # remembered, then re-raised unchanged: never swallowed
                self._failures[model_name] = error
                raise
        return self._experiments[model_name]

    def _start(self, model_name: str) -> Experiment:
        spec = self.settings.model_spec(model_name)
        check_family_supported(spec)
        loaded = load_model(
            spec,
            cache_dir=self.settings.cache_dir,
            device=self.settings.device,
            dtype=self.settings.dtype,
            allow_download=self.settings.allow_download,
            device_map=self.settings.device_map_argument,
            max_memory=self.settings.max_memory,
            specs=self.settings.model_spec,
        )
        if loaded.family.text_only:
            return TextExperiment(loaded, self.texts, self.settings, self.rankings)
        clip = self.clip(self.settings.clip or spec.clip, loaded.device)
        return ImageExperiment(loaded, clip, self.images, self.settings, self.rankings)

    def clip(self, spec: ClipSpec, device: torch.device) -> ClipScorer:
        """One CLIP scorer per (model, device), shared by every experiment on that device."""
        if (spec, device) not in self._clips:
            self._clips[spec, device] = ClipScorer(
                spec, cache_dir=self.settings.cache_dir, device=device, allow_download=self.settings.allow_download
            )
        return self._clips[spec, device]


def load_image_set(settings: HarnessSettings) -> ImageSet:
    """All categories under the configured root (held-out renderings of the synthetic world by default), the
    selection checked by name."""
    root = settings.image_root or ensure_built(WORLD_IMAGES, settings.cache_dir)
    images = scan_image_root(
        Path(root),
        max_per_category=settings.max_images,
        max_pixels=settings.max_image_pixels,
        max_aspect=settings.max_image_aspect,
    )
    for category in settings.categories or ():
        images.check_category(category)
    return images
