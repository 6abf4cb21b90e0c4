"""Image features computed once per category and reused by every masked generation whose mask lies inside the
language model: the vision tower and projector (LLaVA) do not see such a mask, so re-encoding the same images at
every evaluated k would only repeat work.

transformers' generate takes pre-encoded images as `mm_encoder_outputs`, in place of the pixel inputs, for models
whose forward accepts them; InstructBLIP's own generate re-encodes always and is left as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch

from harness.models.prompts import Prompt, encode_prompts


@dataclass(frozen=True)
class EncodedImage:
    """One image's features as the model's image encoder returns them (a list entry, or a row of a batch)."""

    features: torch.Tensor
    output_type: type  # the encoder's ModelOutput class
    listed: bool  # the encoder returns a list of per-image tensors (LLaVA), not one stacked tensor


@cache
def _generate_takes_encodings(model_cls: type) -> bool:
    from transformers import GenerationMixin

    return (
        "mm_encoder_outputs" in inspect.signature(model_cls.forward).parameters
        and model_cls.generate is GenerationMixin.generate
    )


def supports_image_reuse(loaded) -> bool:
    """Whether generation can take pre-encoded images (LLaVA, LLaVA-NeXT), rather than re-encoding them."""
    return "images" in loaded.family.inputs and _generate_takes_encodings(type(loaded.model))


def _encoder(loaded):
    return loaded.model.base_model.get_image_features


def _encoder_inputs(loaded, batch: dict[str, torch.Tensor]) -> list[str]:
    """The keys of a processor batch that only the image encoder reads (pixel values, image sizes …)."""
    accepted = inspect.signature(_encoder(loaded)).parameters
    return [name for name in batch if name in accepted and name != "kwargs"]


@torch.no_grad()
def encode_images(loaded, prompts: Sequence[Prompt], batch_size: int) -> list[EncodedImage]:
    """Each image's features, in batches of `batch_size` as generation would encode them (call it unmasked, or
    under a mask inside the language model)."""
    encoded = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(loaded, prompts[start : start + batch_size])
        pixels = {name: batch[name] for name in _encoder_inputs(loaded, batch)}
        output = _encoder(loaded)(**pixels, return_dict=True)
        pooled = output.pooler_output
        listed = isinstance(pooled, list | tuple)
        encoded.extend(EncodedImage(features, type(output), listed) for features in pooled)
    return encoded


def with_encoded_images(
    loaded, batch: dict[str, torch.Tensor], images: Sequence[EncodedImage]
) -> dict[str, object]:
    """`batch` (its rows the images' prompts) with the pixel inputs replaced by the images' features."""
    inputs: dict[str, object] = {k: v for k, v in batch.items() if k not in _encoder_inputs(loaded, batch)}
    first = images[0]
    features = [image.features for image in images]
    pooled = features if first.listed else torch.stack(features)
    inputs["mm_encoder_outputs"] = {"image": first.output_type(pooler_output=pooled)}
    return inputs
