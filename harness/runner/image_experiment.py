"""Collapse experiments on vision-language models: captions of a category's images, scored by the unmasked
model (the reference PPL) and by CLIP against their images, with the chance level of captions that do not describe
them."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from harness.core.metrics import log10_ppl
from harness.data.images import ImageSet
from harness.models.captioning import Caption, Prompt, generate_captions, score_captions
from harness.models.clip_score import ClipScorer, clip_score_matrix, clip_scores
from harness.models.image_encoding import EncodedImage, encode_images, supports_image_reuse
from harness.models.loading import LoadedModel
from harness.models.masking import JointMask, NeuronMask
from harness.models.prompt_prefix import PromptPrefix, encode_prefixes, score_after_prefixes, supports_prefix_reuse
from harness.models.row_masks import mask_rows
from harness.models.sites import AnySite, inside_language_model
from harness.runner.experiment import Experiment, ModelState, Observation, set_slices
from harness.runner.ranking_cache import RankingCache
from harness.runner.settings import HarnessSettings
from harness.science.metric_registry import CLIP, DEGENERATE_RATE, LOG10_PPL, SELF_LOG10_PPL
from harness.science.stages import Criterion


class ImageExperiment(Experiment):
    """Measures collapse points of a vision-language model on the run's images."""

    kind = "image"
    metrics = (LOG10_PPL.name, SELF_LOG10_PPL.name, CLIP.name, DEGENERATE_RATE.name)

    def __init__(
        self,
        loaded: LoadedModel,
        clip: ClipScorer,
        images: ImageSet,
        settings: HarnessSettings,
        rankings: RankingCache,
        state: ModelState | None = None,
    ):
        super().__init__(loaded, settings, rankings, state)
        self.clip, self.images = clip, images

    def _sibling(self, settings: HarnessSettings) -> ImageExperiment:
        return ImageExperiment(self.loaded, self.clip, self.images, settings, self.rankings, self.state)

    def clip_label(self) -> str:
        return self.clip.spec.label

    def criterion(self) -> Criterion:
        """A VLM's complete collapse needs the PPL blow-up and captions that no longer describe the image (CLIP at
        chance, or degenerate text)."""
        return Criterion((LOG10_PPL.name, CLIP.name, DEGENERATE_RATE.name), self.settings.thresholds)

    def samples(self, category: str) -> Sequence[Prompt]:
        """The model's inputs on `category`: its images."""
        return self.images.images(category)

    def ranking_data(self, category: str) -> tuple[Sequence[Prompt], list[Caption]]:
        """The inputs and teacher-forced targets the ranking loss (and mean ablation) is computed on: the images
        and the unmasked model's own captions."""
        return self.samples(category), self.baseline(category).captions

    def data_record(self, category: str) -> dict[str, object]:
        """What identifies the data of `category`: the sha256 of every image file, in order."""
        return {"images": self.images.content_hashes(category)}

    def observe(
        self, category: str, mask: NeuronMask | JointMask | None = None, *, stage_only: bool = False
    ) -> Observation:
        """Captions generated under `mask` (None: unmasked), each scored by the unmasked model (the reference PPL)
        and by CLIP against its image. A VLM's stage needs all of it, so `stage_only` changes nothing here."""
        with mask or nullcontext():
            captions = self._captions(category, self.encoded_images(category, None if mask is None else mask.site))
        return self._observation(category, captions)

    def _observation(self, category: str, captions: list[Caption]) -> Observation:
        """The metrics of `category`'s captions: the reference PPL (scored by the unmasked model: call it
        unmasked), each caption's own PPL, CLIP against its image with the chance level, and degenerate flags."""
        reference = self.reference_nll(category, captions)
        clip, chance = self._clip_and_chance(category, captions)
        values = {
            LOG10_PPL.name: [log10_ppl(nll) for nll in reference],
            SELF_LOG10_PPL.name: [log10_ppl(caption.self_nll) for caption in captions],
            CLIP.name: clip,
            DEGENERATE_RATE.name: [float(caption.degenerate) for caption in captions],
        }
        return Observation(captions, reference, values, {CLIP.name: chance})

    def encoded_images(self, category: str, masked: AnySite | None) -> list[EncodedImage] | None:
        """The category's image features (computed once, unmasked) where generation under a mask of `masked` can
        reuse them: the model takes pre-encoded images and the mask is inside its language model; else None."""
        if not supports_image_reuse(self.loaded) or (masked is not None and not inside_language_model(masked)):
            return None
        if category not in self.state.encoded_images:
            prompts, batch_size = self.samples(category), self.settings.batch_size
            self.state.encoded_images[category] = encode_images(self.loaded, prompts, batch_size)
        return self.state.encoded_images[category]

    def reference_nll(self, category: str, captions: Sequence[Caption]) -> list[float]:
        """Each caption (aligned with the category's images) scored by the unmasked model: only its own tokens,
        after the prompts' cached prefixes, where the model's forward allows it (harness.models.prompt_prefix);
        else the whole prompt + caption. Call it unmasked."""
        if not supports_prefix_reuse(self.loaded):
            return score_captions(
                self.loaded, self.samples(category), captions, batch_size=self.settings.batch_size
            )
        return score_after_prefixes(self.loaded, self.prompt_prefixes(category), captions)

    def prompt_prefixes(self, category: str) -> list[PromptPrefix]:
        """The unmasked model's prompt prefixes of `category`, in batches of batch_size images. Only the last
        category's are kept: LLaVA-1.5-7b's KV cache is ~0.3 GB an image in bf16."""
        if category not in self.state.prefixes:
            self.state.prefixes.clear()
            prompts, batch_size = self.samples(category), self.settings.batch_size
            self.state.prefixes[category] = encode_prefixes(self.loaded, prompts, batch_size)
        return self.state.prefixes[category]

    def image_features(self, category: str) -> torch.Tensor:
        if category not in self.state.clip_features:
            self.state.clip_features[category] = self.clip.image_features(self.images.images(category))
        return self.state.clip_features[category]

    def _clip_and_chance(self, category: str, captions: list[Caption]) -> tuple[list[float], float | None]:
        """CLIP score of each (image, its caption), and the chance level: the same captions scored against
        every image of the other categories (what a caption that does not describe the image scores)."""
        texts = self.clip.text_features([c.text for c in captions])
        own = clip_scores(self.image_features(category), texts).tolist()
        others = self.images.other_categories(category)
        if not others:
            return own, None
        if category not in self.state.other_clip_features:  # built once per category, reused at every k
            self.state.other_clip_features[category] = torch.cat([self.image_features(other) for other in others])
        return own, float(clip_score_matrix(self.state.other_clip_features[category], texts).mean())

    def observe_many(
        self, category: str, site: AnySite, neuron_sets: Sequence[torch.Tensor], *, stage_only: bool = False
    ) -> list[Observation]:
        """`observe` under each zero-ablation neuron set: the images repeated once per set in batches of
        batch_size × sets rows, row r masked with its own set; each set's captions then scored as `observe`
        scores them."""
        samples = list(self.samples(category))
        prompts, rows = samples * len(neuron_sets), [s for s in neuron_sets for _ in samples]
        width = self.settings.batch_size * len(neuron_sets)
        encoded = self.encoded_images(category, site)
        captions = generate_captions(
            self.loaded, prompts, max_new_tokens=self.settings.max_new_tokens, batch_size=width,
            chunk_mask=lambda part: mask_rows(site, rows[part]),
            encoded_images=None if encoded is None else encoded * len(neuron_sets),
        )  # fmt: skip
        return [self._observation(category, captions[part]) for part in set_slices(len(samples), len(neuron_sets))]
