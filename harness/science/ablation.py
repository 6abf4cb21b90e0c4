"""Which neurons are switched off, and to what: the CAN experiment and its controls.

A collapse is a finding only if the controls do not collapse (README, *Science defaults*): masking k *random*
neurons of the same site must do far less, and replacing the critical neurons by their *mean* activation instead of
zero tells a neuron that carries information from one whose large constant value is load-bearing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from harness.core.errors import UnknownNameError
from harness.models.captioning import Caption, teacher_forced_batches
from harness.models.sites import ResolvedSite, Site
from harness.science.aggregation import summed_over_images

SELECTIONS = ("ranked", "random")
ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class Intervention:
    """`selection`: the ranking's top-k, or k neurons drawn uniformly with `seed` (nested in k for one seed).
    `ablation`: set them to zero, or to their mean activation over the ranking data."""

    selection: str = "ranked"
    ablation: str = "zero"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise UnknownNameError("neuron selection", self.selection, SELECTIONS)
        if self.ablation not in ABLATIONS:
            raise UnknownNameError("ablation", self.ablation, ABLATIONS)

    @property
    def label(self) -> str:
        chosen = "top-k" if self.selection == "ranked" else f"random-k (seed {self.seed})"
        return f"{chosen}, {self.ablation} ablation"


def random_selection(site: Site, k: int, seed: int) -> torch.Tensor:
    """k flat neuron indices of `site` drawn without replacement; the first k of one seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(site.size, generator=generator)[:k]


@torch.no_grad()
def mean_activations(
    loaded,
    site: ResolvedSite,
    images: Sequence[Image.Image],
    captions: Sequence[Caption],
    *,
    positions: str,
    batch_size: int,
) -> torch.Tensor:
    """[layers, channels] float32 mean activation over the same images, captions and positions the ranking
    aggregates (mean over positions per image, then over images)."""
    totals = torch.zeros(site.n_layers, site.width, dtype=torch.float32, device=loaded.device)
    weights: torch.Tensor | None = None

    def add(layer: int, activation: torch.Tensor) -> None:
        totals[layer] += summed_over_images(site, activation.float(), weights)

    with site.watched(add):
        for batch in teacher_forced_batches(loaded, images, captions, batch_size):
            weights = batch.position_weights(positions)
            loaded.model(**batch.inputs, use_cache=False)
    return (totals / len(images)).cpu()


@torch.no_grad()
def single_neuron_effects(
    loaded,
    site: ResolvedSite,
    images: Sequence[Image.Image],
    captions: Sequence[Caption],
    *,
    batch_size: int,
) -> torch.Tensor:
    """[layers, channels] ground truth for a ranking: the increase of the mean caption NLL when each neuron alone
    is zeroed (one masked forward pass per neuron over the same images and captions the ranking used)."""
    from harness.models.captioning import score_captions
    from harness.models.masking import NeuronMask

    def mean_nll() -> float:
        nll = score_captions(loaded, images, captions, batch_size=batch_size)
        return sum(nll) / len(nll)

    baseline = mean_nll()
    effects = torch.empty(site.size, dtype=torch.float32)
    for index in range(site.size):
        with NeuronMask(site, [index], verify=False):
            effects[index] = mean_nll() - baseline
    return effects.reshape(site.n_layers, site.width)


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    """Spearman's rank correlation of two score tensors of the same shape (ties broken by position)."""

    def ranks(values: torch.Tensor) -> torch.Tensor:
        order = values.reshape(-1).double().argsort(stable=True)
        result = torch.empty_like(order, dtype=torch.float64)
        result[order] = torch.arange(order.numel(), dtype=torch.float64)
        return result - result.mean()

    a, b = ranks(first), ranks(second)
    return float((a * b).sum() / (a.norm() * b.norm()))


def top_k_overlap(first: torch.Tensor, second: torch.Tensor, k: int) -> int:
    """How many of the k highest entries of `first` are among the k highest of `second`."""
    top = lambda values: set(values.reshape(-1).topk(k).indices.tolist())  # noqa: E731
    return len(top(first) & top(second))
