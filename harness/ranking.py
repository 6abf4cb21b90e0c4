"""CAN importance: I[l, j] = mean over images of (mean over positions of |∂L/∂a[l, j]|^α · |a[l, j]|).

One batched forward + backward per batch of images. Parameters stay frozen: the graph starts at the first hooked
activation (made a leaf that requires grad), so the backward computes only activation gradients, never weight
gradients. Accumulators are float32 [layers, channels]: memory O(channels), never O(tokens × channels) beyond one
batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from PIL import Image

from harness.captioning import Caption, caption_nll_per_row, teacher_forced_batch
from harness.errors import UnknownNameError
from harness.sites import ResolvedSite

Positions = Literal["all", "scored"]
POSITIONS = ("all", "scored")


@dataclass(frozen=True)
class CanOptions:
    """The free choices of the CAN method; every one goes into the cache key and the results."""

    alpha: float = 1.0
    positions: Positions = "all"  # 'all' keeps token 0, where massive activations live (DESIGN §3)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"CAN alpha must be in [0, 1], got {self.alpha!r}")
        if self.positions not in POSITIONS:
            raise UnknownNameError("CAN position aggregation", self.positions, POSITIONS)


@dataclass(frozen=True)
class Ranking:
    """Per-neuron scores of one site, and the global order they induce (highest first, ties by index)."""

    site: str
    scores: torch.Tensor  # [layers, channels] float32; flat [neurons] for a joint site
    key: str

    @cached_property
    def order(self) -> torch.Tensor:
        flat = self.scores.reshape(-1)
        return torch.sort(flat, descending=True, stable=True).indices

    def top_k(self, k: int) -> torch.Tensor:
        """Flat indices of the k highest-scoring neurons: nested in k by construction."""
        return self.order[:k]


def can_importance(
    loaded,
    site: ResolvedSite,
    images: Sequence[Image.Image],
    captions: Sequence[Caption],
    *,
    options: CanOptions,
    batch_size: int,
) -> torch.Tensor:
    """[layers, channels] float32 CAN scores of `site`, the loss being each caption's teacher-forced mean NLL."""
    need_grad = options.alpha > 0
    totals = torch.zeros(site.n_layers, site.width, dtype=torch.float32, device=loaded.device)
    captured: list[torch.Tensor | None] = [None] * site.n_layers

    def keep(layer: int, activation: torch.Tensor) -> None:
        if need_grad and not activation.requires_grad:
            activation.requires_grad_()  # first hooked layer: a leaf, so the graph starts here
        captured[layer] = activation

    with site.watched(keep):
        for start in range(0, len(images), batch_size):
            batch = teacher_forced_batch(
                loaded, images[start : start + batch_size], captions[start : start + batch_size]
            )
            with torch.set_grad_enabled(need_grad):
                loss = caption_nll_per_row(loaded, batch).sum()  # sum over images: each row gets its own gradient
                grads = (
                    torch.autograd.grad(loss, captured, allow_unused=True, materialize_grads=True)
                    if need_grad
                    else [None] * site.n_layers
                )
            mask = batch.position_mask(options.positions).float()
            weights = mask / mask.sum(1, keepdim=True)  # mean over the aggregated positions of each image
            for layer, (activation, grad) in enumerate(zip(captured, grads, strict=True)):
                contribution = activation.detach().float().abs()
                if grad is not None:
                    contribution = contribution * grad.float().abs().pow(options.alpha)
                totals[layer] += torch.einsum("btw,bt->w", contribution, weights)
            captured[:] = [None] * site.n_layers
    return (totals / len(images)).cpu()
