"""Neuron importance by every ranking method the field uses, one [layers, channels] float32 score per neuron.

- `can` (the CAN paper): I[l, j] = mean over images of (aggregate over positions of |∂L/∂a[l, j]|^α · |a[l, j]|);
- `activation`: |a| (CAN with α = 0), `gradient`: |∂L/∂a| — the baselines PCICN reports as weak;
- `pcicn` (PCICN, "The Achilles' Heel of LLMs"): Gaussian noise of std σ added to the input embeddings, K samples;
  each element (position, channel) scores the mean over samples of |a_clean − a_noisy|, then positions are
  aggregated;
- `random`: seeded uniform scores, a ranking that knows nothing (the null model for any other).

Positions are aggregated by their `mean` or their `max`. PCICN's authors sort (module, position, channel) elements
and mask a listed element's channel at every position, so a channel ranks by its best position: `max`, the
default of `pcicn`. The CAN paper does not say; `can` keeps `mean`.

L is each caption's teacher-forced mean NLL. Gradient methods run one batched forward + backward per batch of
images with parameters frozen: the graph starts at the first hooked activation (made a leaf that requires grad),
so the backward computes only activation gradients, never weight gradients. `pcicn` runs one clean and K noisy
forward passes per batch under no_grad. Several sites (a joint site's parts) are scored in the same passes.
Accumulators are float32 [layers, channels]: memory O(channels), never O(tokens × channels) beyond one batch;
every per-element operation is a tensor operation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
from PIL import Image

from harness.core import progress
from harness.models.captioning import Caption, caption_nll_per_row, teacher_forced_batches
from harness.models.sites import ResolvedSite
from harness.science.aggregation import summed_over_images
from harness.science.ranking_options import RankingOptions


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


def importance(
    loaded,
    site: ResolvedSite,
    images: Sequence[Image.Image],
    captions: Sequence[Caption],
    *,
    options: RankingOptions,
    batch_size: int,
) -> torch.Tensor:
    """[layers, channels] float32 scores of `site` by `options.method` (see the module docstring)."""
    return importances(loaded, [site], images, captions, options=options, batch_size=batch_size)[0]


def importances(
    loaded,
    sites: Sequence[ResolvedSite],
    images: Sequence[Image.Image],
    captions: Sequence[Caption],
    *,
    options: RankingOptions,
    batch_size: int,
) -> list[torch.Tensor]:
    """The scores of several sites, computed in the same passes by the registered method's scoring function
    (harness.science.ranking_methods); each equals that site's `importance` alone."""
    score = options.method_declaration.score
    with progress.task(f"ranking {loaded.spec.name} {'+'.join(s.name for s in sites)} ({options.label})") as task:
        return score(loaded, sites, images, captions, options=options, batch_size=batch_size, task=task)


def random_scores(loaded, sites, images, captions, *, options: RankingOptions, batch_size: int, task):
    """Seeded uniform scores: a ranking that knows nothing."""
    return [torch.rand(s.n_layers, s.width, generator=torch.Generator().manual_seed(options.seed)) for s in sites]


def can_scores(loaded, sites, images, captions, *, options: RankingOptions, batch_size: int, task):
    """CAN: |a|·|∂L/∂a|^α (no backward pass at α = 0, where |g|⁰ = 1)."""
    alpha = options.alpha
    if alpha == 0:
        return _gradient_weighted(loaded, sites, images, captions, options, batch_size, task, None)
    return _gradient_weighted(
        loaded, sites, images, captions, options, batch_size, task, lambda a, g: a.abs() * g.abs().pow(alpha)
    )


def activation_scores(loaded, sites, images, captions, *, options: RankingOptions, batch_size: int, task):
    """|a|: CAN with α = 0."""
    return _gradient_weighted(loaded, sites, images, captions, options, batch_size, task, None)


def gradient_scores(loaded, sites, images, captions, *, options: RankingOptions, batch_size: int, task):
    """|∂L/∂a|."""
    return _gradient_weighted(loaded, sites, images, captions, options, batch_size, task, lambda a, g: g.abs())


class _Captured:
    """The activations of every (site, layer) in the latest forward pass."""

    def __init__(self, sites: Sequence[ResolvedSite]):
        self.sites = sites
        self.values: list[list[torch.Tensor | None]] = [[None] * site.n_layers for site in sites]

    @contextmanager
    def watching(self, transform: Callable[[torch.Tensor], torch.Tensor] = lambda a: a) -> Iterator[None]:
        with ExitStack() as stack:
            for index, site in enumerate(self.sites):

                def keep(layer: int, activation: torch.Tensor, index: int = index) -> None:
                    self.values[index][layer] = transform(activation)

                stack.enter_context(site.watched(keep))
            yield

    def flat(self) -> list[torch.Tensor | None]:
        return [value for per_site in self.values for value in per_site]

    def snapshot(self) -> list[list[torch.Tensor]]:
        return [list(per_site) for per_site in self.values]

    def clear(self) -> None:
        self.values = [[None] * site.n_layers for site in self.sites]


def _gradient_weighted(
    loaded,
    sites,
    images,
    captions,
    options: RankingOptions,
    batch_size: int,
    task,
    contribution: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> list[torch.Tensor]:
    """Each activation's `contribution(a, ∂L/∂a)` (None: |a|, with no backward pass), aggregated over positions
    and averaged over images."""
    need_grad = contribution is not None
    totals = [torch.zeros(s.n_layers, s.width, dtype=torch.float32, device=loaded.device) for s in sites]
    captured = _Captured(sites)

    def leaf(activation: torch.Tensor) -> torch.Tensor:
        if need_grad and not activation.requires_grad:
            activation.requires_grad_()  # first hooked activation of its path: a leaf, so the graph starts here
        return activation

    task.total = math.ceil(len(images) / batch_size)
    with captured.watching(leaf):
        for batch in teacher_forced_batches(loaded, images, captions, batch_size):
            with torch.set_grad_enabled(need_grad):
                loss = caption_nll_per_row(loaded, batch).sum()  # sum over images: each row gets its own gradient
                activations = captured.flat()
                grads = (
                    torch.autograd.grad(loss, activations, allow_unused=True, materialize_grads=True)
                    if need_grad
                    else [None] * len(activations)
                )
            weights = batch.position_weights(options.positions)
            pairs = iter(zip(activations, grads, strict=True))
            for site, total in zip(sites, totals, strict=True):
                for layer in range(site.n_layers):
                    activation, grad = next(pairs)
                    activation = activation.detach().float()
                    values = activation.abs() if grad is None else contribution(activation, grad.float())
                    total[layer] += summed_over_images(site, values, weights, options.aggregation)
            captured.clear()
            task.step()
    return [(total / len(images)).cpu() for total in totals]


@torch.no_grad()
def noise_sensitivity_scores(loaded, sites, images, captions, *, options: RankingOptions, batch_size: int, task):
    """PCICN: per batch one clean pass, then K passes with N(0, σ²) added to the input-embedding output (drawn on
    the CPU from one seeded generator, pass by pass, in the embedding output's shape, as the authors'
    `randn_like`). Each element's mean |clean − noisy| over the K passes is aggregated over positions."""
    generator = torch.Generator().manual_seed(options.seed)
    totals = [torch.zeros(s.n_layers, s.width, dtype=torch.float32, device=loaded.device) for s in sites]
    captured = _Captured(sites)
    task.total = math.ceil(len(images) / batch_size) * (options.noise_samples + 1)
    with captured.watching(lambda activation: activation.float()):
        for batch in teacher_forced_batches(loaded, images, captions, batch_size):
            weights = batch.position_weights(options.positions)
            loaded.model(**batch.inputs, use_cache=False)
            clean = captured.snapshot()
            task.step()
            differences: list[list[torch.Tensor]] = [[torch.zeros_like(a) for a in per_site] for per_site in clean]
            for _ in range(options.noise_samples):
                with _noisy_embeddings(
                    loaded, lambda shape: options.noise_sigma * torch.randn(shape, generator=generator)
                ):
                    loaded.model(**batch.inputs, use_cache=False)
                for summed, references, noisy in zip(differences, clean, captured.values, strict=True):
                    for layer, (reference, value) in enumerate(zip(references, noisy, strict=True)):
                        summed[layer] += (reference - value).abs()
                task.step()
            for site, total, summed in zip(sites, totals, differences, strict=True):
                for layer in range(site.n_layers):
                    total[layer] += summed_over_images(
                        site, summed[layer] / options.noise_samples, weights, options.aggregation
                    )
            captured.clear()
    return [(total / len(images)).cpu() for total in totals]


@contextmanager
def _noisy_embeddings(loaded, draw: Callable[[torch.Size], torch.Tensor]) -> Iterator[None]:
    """Adds `draw(shape)` to the output of the model's input-embedding module inside the block."""

    def add(module, args, output: torch.Tensor) -> torch.Tensor:
        return output + draw(output.shape).to(device=output.device, dtype=output.dtype)

    handle = loaded.model.get_input_embeddings().register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
