"""Position aggregation: a per-element score or activation tensor [images, positions, channels] becomes one value
per channel, the sum over images of each image's mean (or max) over its positions.

Language-model sites take the text positions a batch's position weights choose ([images, positions], rows summing
to 1, weighing the mean); the vision tower, Q-Former and projector all their own positions (patches, query
tokens), across every crop when a model cuts an image into several (LLaVA-NeXT's any-resolution tiles: more rows
than images). Rankings and mean activations aggregate alike, so that a mean ablation replaces a neuron by the mean
over the positions its ranking scored."""

from __future__ import annotations

import torch

from harness.core.errors import UnknownNameError
from harness.models.sites import ResolvedSite, inside_language_model
from harness.science.ranking_methods import AGGREGATIONS


def summed_over_images(
    site: ResolvedSite, values: torch.Tensor, position_weights: torch.Tensor, aggregation: str = "mean"
) -> torch.Tensor:
    """[B, T, W] values of one layer of `site` → [W]: the sum over images of each image's `aggregation` ('mean' or
    'max') over positions. The sum is on the device of `position_weights`, wherever a device map put the layer."""
    if aggregation not in AGGREGATIONS:
        raise UnknownNameError("position aggregation", aggregation, AGGREGATIONS)
    images, values = position_weights.shape[0], values.to(position_weights.device)
    text_positions = inside_language_model(site)
    if aggregation == "max":
        if text_positions:
            chosen = (position_weights > 0)[..., None]
            return values.masked_fill(~chosen, float("-inf")).amax(1).sum(0)
        return values.amax(1).mean(0) * images
    if text_positions:
        return torch.einsum("btw,bt->w", values, position_weights)
    return values.mean(dim=(0, 1)) * images
