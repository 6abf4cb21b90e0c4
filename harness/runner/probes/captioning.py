"""Captioning, a vision-language model's own probe: captions of a category's images, scored by the unmasked model
(the reference PPL) and by CLIP against their images, with the chance level of captions that do not describe
them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.core.metrics import log10_ppl
from harness.models.captioning import Caption, Prompt, generate_captions, score_captions
from harness.models.clip_score import ClipScorer, clip_score_matrix, clip_scores
from harness.models.image_encoding import EncodedImage, encode_images, supports_image_reuse
from harness.models.prompt_prefix import PromptPrefix, encode_prefixes, score_after_prefixes, supports_prefix_reuse
from harness.models.sites import AnySite, inside_language_model
from harness.runner.probe import UNMASKED, Masking, Observation, Probe, register_probe
from harness.science.metric_registry import CLIP, DEGENERATE_RATE, LOG10_PPL, SELF_LOG10_PPL
from harness.science.stages import Criterion


class ImageProbe(Probe):
    """What every probe of a vision-language model on the run's images shares: the images of a category as the
    model's inputs, their features encoded once where generation can take them, the prompts' prefixes cached for
    reference scoring."""

    data = "images"

    def __init__(self, loaded, settings, sources, session):
        super().__init__(loaded, settings, sources, session)
        self.images = sources.images
        self._encoded: dict[str, list[EncodedImage]] = {}
        self._prefixes: dict[str, list[PromptPrefix]] = {}

    def samples(self, category: str) -> Sequence[Prompt]:
        """The model's inputs on `category`: its images."""
        return self.images.images(category)

    def encoded_images(self, category: str, masked: AnySite | None) -> list[EncodedImage] | None:
        """The category's image features (computed once, unmasked) where generation under a mask of `masked` can
        reuse them: the model takes pre-encoded images and the mask is inside its language model; else None."""
        if not supports_image_reuse(self.loaded) or (masked is not None and not inside_language_model(masked)):
            return None
        if category not in self._encoded:
            self._encoded[category] = encode_images(self.loaded, self.samples(category), self.settings.batch_size)
        return self._encoded[category]

    def generate(self, category: str, masking: Masking, max_new_tokens: int) -> list[Caption]:
        """Greedy outputs of `category`'s samples under each variant of `masking`, in one batched pass (the
        samples repeated once per variant, variant-major)."""
        samples, count = list(self.samples(category)), masking.count
        encoded = self.encoded_images(category, masking.site)
        with masking.applied():
            return generate_captions(
                self.loaded, samples * count, max_new_tokens=max_new_tokens,
                batch_size=self.settings.batch_size * count, chunk_mask=masking.chunk_mask(len(samples)),
                encoded_images=None if encoded is None else encoded * count,
            )  # fmt: skip

    def reference_nll(self, category: str, captions: Sequence[Caption]) -> list[float]:
        """Each output (aligned with the category's samples) scored by the unmasked model: only its own tokens,
        after the prompts' cached prefixes, where the model's forward allows it (harness.models.prompt_prefix);
        else the whole prompt + output. Call it unmasked."""
        if not supports_prefix_reuse(self.loaded):
            return score_captions(
                self.loaded, self.samples(category), captions, batch_size=self.settings.batch_size
            )
        return score_after_prefixes(self.loaded, self.prompt_prefixes(category), captions)

    def prompt_prefixes(self, category: str) -> list[PromptPrefix]:
        """The unmasked model's prompt prefixes of `category`, in batches of batch_size images. Only the last
        category's are kept: LLaVA-1.5-7b's KV cache is ~0.3 GB an image in bf16."""
        if category not in self._prefixes:
            self._prefixes.clear()
            self._prefixes[category] = encode_prefixes(
                self.loaded, self.samples(category), self.settings.batch_size
            )
        return self._prefixes[category]


@register_probe
class CaptioningProbe(ImageProbe):
    """Captions of a category's images, judged by the reference PPL, CLIP and their degenerate rate."""

    name = "captioning"
    metrics = (LOG10_PPL.name, SELF_LOG10_PPL.name, CLIP.name, DEGENERATE_RATE.name)
    labelled = False  # a vision-language model's own probe: its curves keep their short names

    def __init__(self, loaded, settings, sources, session):
        super().__init__(loaded, settings, sources, session)
        self.clip: ClipScorer = session.clip(settings.clip or loaded.spec.clip, loaded.device)
        self._features: dict[str, torch.Tensor] = {}
        self._other_features: dict[str, torch.Tensor] = {}

    def resolved_settings(self) -> dict[str, object]:
        return {"clip_model": self.clip.spec.label}

    def criterion(self) -> Criterion:
        """A VLM's complete collapse needs the PPL blow-up and captions that no longer describe the image (CLIP at
        chance, or degenerate text)."""
        return Criterion((LOG10_PPL.name, CLIP.name, DEGENERATE_RATE.name), self.settings.thresholds)

    def ranking_data(self, category: str) -> tuple[Sequence[Prompt], list[Caption]]:
        """The images and the unmasked model's own captions."""
        return self.samples(category), self.baseline(category).captions

    def observe(
        self, category: str, masking: Masking = UNMASKED, *, stage_only: bool = False
    ) -> list[Observation]:
        """Captions generated under each variant of `masking`, each scored by the unmasked model (the reference
        PPL) and by CLIP against its image. A VLM's stage needs all of it, so `stage_only` changes nothing here."""
        captions = self.generate(category, masking, self.settings.max_new_tokens)
        return [
            self._observation(category, captions[part]) for part in masking.slices(len(self.samples(category)))
        ]

    def _observation(self, category: str, captions: list[Caption]) -> Observation:
        """The metrics of `category`'s captions: the reference PPL, each caption's own PPL, CLIP against its image
        with the chance level, and degenerate flags."""
        reference = self.reference_nll(category, captions)
        clip, chance = self._clip_and_chance(category, captions)
        values = {
            LOG10_PPL.name: [log10_ppl(nll) for nll in reference],
            SELF_LOG10_PPL.name: [log10_ppl(caption.self_nll) for caption in captions],
            CLIP.name: clip,
            DEGENERATE_RATE.name: [float(caption.degenerate) for caption in captions],
        }
        return Observation(captions, reference, values, {CLIP.name: chance})

    def image_features(self, category: str) -> torch.Tensor:
        if category not in self._features:
            self._features[category] = self.clip.image_features(self.images.images(category))
        return self._features[category]

    def _clip_and_chance(self, category: str, captions: list[Caption]) -> tuple[list[float], float | None]:
        """CLIP score of each (image, its caption), and the chance level: the same captions scored against
        every image of the other categories (what a caption that does not describe the image scores)."""
        texts = self.clip.text_features([c.text for c in captions])
        own = clip_scores(self.image_features(category), texts).tolist()
        others = self.images.other_categories(category)
        if not others:
            return own, None
        if category not in self._other_features:  # built once per category, reused at every k
            self._other_features[category] = torch.cat([self.image_features(other) for other in others])
        return own, float(clip_score_matrix(self._other_features[category], texts).mean())
