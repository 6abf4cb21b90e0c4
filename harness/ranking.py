"""Neuron importance by every ranking method the field uses, one [layers, channels] float32 score per neuron.

- `can` (the CAN paper): I[l, j] = mean over images of (mean over positions of |∂L/∂a[l, j]|^α · |a[l, j]|);
- `activation`: mean |a| (CAN with α = 0), `gradient`: mean |∂L/∂a| — the baselines PCICN reports as weak;
- `pcicn` (PCICN, "The Achilles' Heel of LLMs"): Gaussian noise of std σ added to the input embeddings, K samples;
  importance = mean |a_clean − a_noisy| over samples, positions and images;
- `random`: seeded uniform scores, a ranking that knows nothing (the null model for any other).

L is each caption's teacher-forced mean NLL. Gradient methods run one batched forward + backward per batch of
images with parameters frozen: the graph starts at the first hooked activation (made a leaf that requires grad),
so the backward computes only activation gradients, never weight gradients. `pcicn` runs one clean and K noisy
forward passes per batch under no_grad. Accumulators are float32 [layers, channels]: memory O(channels), never
O(tokens × channels) beyond one batch; every per-element operation is a tensor operation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from PIL import Image

from harness.captioning import Caption, caption_nll_per_row, teacher_forced_batches
from harness.errors import UnknownNameError
from harness.sites import ResolvedSite

Positions = Literal["all", "scored"]
POSITIONS = ("all", "scored")
RANKING_METHODS = ("can", "activation", "gradient", "pcicn", "random")
GRADIENT_METHODS = ("can", "activation", "gradient")


@dataclass(frozen=True)
class RankingOptions:
    """The ranking method and its free choices; the ones the method uses go into the cache key and the results."""

    method: str = "can"
    alpha: float = 1.0  # can: exponent on |∂L/∂a|
    positions: Positions = "all"  # 'all' keeps token 0, where massive activations live (DESIGN §3)
    noise_sigma: float = 5.0  # pcicn: std of the noise on the input embeddings (the paper's σ)
    noise_samples: int = 100  # pcicn: K noisy passes per batch (the paper's K)
    seed: int = 0  # pcicn noise, random scores

    def __post_init__(self) -> None:
        if self.method not in RANKING_METHODS:
            raise UnknownNameError("ranking method", self.method, RANKING_METHODS)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"CAN alpha must be in [0, 1], got {self.alpha!r}")
        if self.positions not in POSITIONS:
            raise UnknownNameError("position aggregation", self.positions, POSITIONS)
        if not (self.noise_sigma > 0 and self.noise_sigma < float("inf")):
            raise ValueError(f"PCICN noise sigma must be a finite number > 0, got {self.noise_sigma!r}")
        if self.noise_samples < 1:
            raise ValueError(f"PCICN noise samples must be ≥ 1, got {self.noise_samples!r}")

    def used(self) -> dict[str, object]:
        """The options this method reads: what a result records and a cache key hashes."""
        fields = {
            "can": ("alpha", "positions"),
            "activation": ("positions",),
            "gradient": ("positions",),
            "pcicn": ("positions", "noise_sigma", "noise_samples", "seed"),
            "random": ("seed",),
        }[self.method]
        return {"method": self.method, **{name: getattr(self, name) for name in fields}}

    @property
    def label(self) -> str:
        """'CAN, α=1, positions=all': how tables and plots name the ranking."""
        names = {"can": "CAN", "pcicn": "PCICN", "alpha": "α", "noise_sigma": "σ", "noise_samples": "K"}
        used = self.used()
        parts = [names.get(self.method, self.method)]
        for name, value in list(used.items())[1:]:
            parts.append(
                f"{names.get(name, name)}={value:g}"
                if isinstance(value, float)
                else f"{names.get(name, name)}={value}"
            )
        return ", ".join(parts)


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
    if options.method == "random":
        generator = torch.Generator().manual_seed(options.seed)
        return torch.rand(site.n_layers, site.width, generator=generator)
    if options.method == "pcicn":
        return _noise_sensitivity(loaded, site, images, captions, options=options, batch_size=batch_size)
    return _gradient_importance(loaded, site, images, captions, options=options, batch_size=batch_size)


def _gradient_importance(loaded, site, images, captions, *, options: RankingOptions, batch_size: int):
    need_grad = options.method == "gradient" or (options.method == "can" and options.alpha > 0)

    def contribution(activation: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        if options.method == "gradient":
            return grad.abs()
        if grad is None:  # activation only, or CAN with α = 0 (|g|⁰ = 1)
            return activation.abs()
        return activation.abs() * grad.abs().pow(options.alpha)

    totals = torch.zeros(site.n_layers, site.width, dtype=torch.float32, device=loaded.device)
    captured: list[torch.Tensor | None] = [None] * site.n_layers

    def keep(layer: int, activation: torch.Tensor) -> None:
        if need_grad and not activation.requires_grad:
            activation.requires_grad_()  # first hooked layer: a leaf, so the graph starts here
        captured[layer] = activation

    with site.watched(keep):
        for batch in teacher_forced_batches(loaded, images, captions, batch_size):
            with torch.set_grad_enabled(need_grad):
                loss = caption_nll_per_row(loaded, batch).sum()  # sum over images: each row gets its own gradient
                grads = (
                    torch.autograd.grad(loss, captured, allow_unused=True, materialize_grads=True)
                    if need_grad
                    else [None] * site.n_layers
                )
            weights = batch.position_weights(options.positions)
            for layer, (activation, grad) in enumerate(zip(captured, grads, strict=True)):
                grad = None if grad is None else grad.float()
                totals[layer] += site.summed_means(contribution(activation.detach().float(), grad), weights)
            captured[:] = [None] * site.n_layers
    return (totals / len(images)).cpu()


@torch.no_grad()
def _noise_sensitivity(loaded, site, images, captions, *, options: RankingOptions, batch_size: int):
    """PCICN: per batch one clean pass, then K passes with N(0, σ²) added to the input-embedding output (drawn on
    the CPU from one seeded generator, sample by sample, in the embedding output's shape)."""
    generator = torch.Generator().manual_seed(options.seed)
    totals = torch.zeros(site.n_layers, site.width, dtype=torch.float32, device=loaded.device)
    captured: list[torch.Tensor | None] = [None] * site.n_layers

    def keep(layer: int, activation: torch.Tensor) -> None:
        captured[layer] = activation.float()

    with site.watched(keep):
        for batch in teacher_forced_batches(loaded, images, captions, batch_size):
            weights = batch.position_weights(options.positions)
            loaded.model(**batch.inputs, use_cache=False)
            clean = list(captured)
            for _ in range(options.noise_samples):
                with _noisy_embeddings(
                    loaded, lambda shape: options.noise_sigma * torch.randn(shape, generator=generator)
                ):
                    loaded.model(**batch.inputs, use_cache=False)
                for layer, (noisy, reference) in enumerate(zip(captured, clean, strict=True)):
                    totals[layer] += site.summed_means((reference - noisy).abs(), weights)
            captured[:] = [None] * site.n_layers
    return (totals / (len(images) * options.noise_samples)).cpu()


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
