"""Speed figures for the two hot paths, measured side by side in one run (ratios, not absolute targets).

1. CAN ranking per image vs a plain forward+backward per image (the cost a user would pay for a naive
   gradient pass with parameter gradients).
2. Masked vs unmasked greedy generation (weight-edit masks should cost nothing; hook masks a little).

Usage: python benchmarks/bench_core.py [--model tiny-llava] [--site lm.down_proj] [--images 16] [--repeats 7]
A wider random LLaVA, built offline (hidden, intermediate, layers of the language model; 224-px images):
       python benchmarks/bench_core.py --random-llava 512,1376,4
On a GPU with a local HF cache: python benchmarks/bench_core.py --model llava-1.5-7b --images 32
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tabulate import tabulate

from harness.core.paths import default_cache_dir
from harness.core.store import EmbeddedAsset
from harness.models.captioning import Caption, caption_nll_per_row, generate_captions, teacher_forced_batch
from harness.models.masking import NeuronMask
from harness.models.prompts import Prompt
from harness.models.registry import get_model_spec, register_model
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ranking import importance
from harness.zoo import build_tiny_llava


def timed(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def side_by_side(candidates: dict[str, Callable[[], object]], repeats: int, device) -> dict[str, float]:
    """Median seconds of each candidate, the candidates interleaved round by round so drift hits all alike."""
    for function in candidates.values():
        function()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            samples[name].append(timed(function, device))
    return {name: statistics.median(values) for name, values in samples.items()}


def plain_forward_backward(loaded, prompts: Sequence[Prompt], targets: Sequence[Caption], batch_size: int) -> None:
    """A plain training-style pass over the ranking's batches: parameter gradients on, loss.backward()."""
    loaded.model.requires_grad_(True)
    try:
        for start in range(0, len(prompts), batch_size):
            rows = slice(start, start + batch_size)
            batch = teacher_forced_batch(loaded, prompts[rows], targets[rows])
            caption_nll_per_row(loaded, batch).sum().backward()
    finally:
        loaded.model.requires_grad_(False)
        loaded.model.zero_grad(set_to_none=True)


def register_random_llava(shape: str) -> str:
    """Register (in this process only) a random LLaVA whose language model is hidden × intermediate × layers."""
    hidden, intermediate, layers = (int(x) for x in shape.split(","))
    name = f"random-llava-{hidden}x{intermediate}x{layers}"
    build = functools.partial(
        build_tiny_llava,
        text_hidden=hidden,
        text_intermediate=intermediate,
        text_layers=layers,
        vision_hidden=128,
        image_size=224,
        patch_size=14,
        initializer_range=0.02,
    )
    embedded = EmbeddedAsset(name=name, version="1", build=build)
    register_model(dataclasses.replace(get_model_spec("tiny-llava"), name=name, embedded=embedded))
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--random-llava", metavar="H,I,L", help="a random LLaVA of this LM shape instead")
    parser.add_argument("--site", default="lm.down_proj")
    parser.add_argument("--category", default=None, help="image category (default: the first)")
    parser.add_argument("--images", type=int, default=16, help="images per measurement (repeats the category)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=16, help="neurons masked for the generation comparison")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args()
    if args.random_llava:
        args.model = register_random_llava(args.random_llava)

    settings = HarnessSettings(
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )
    session = HarnessSession(settings)
    experiment = session.experiment(args.model)
    loaded, site = experiment.loaded, experiment.site(args.site)
    category = args.category or session.images.categories[0]
    pool = session.images.images(category)
    images = [pool[i % len(pool)] for i in range(args.images)]
    captions = generate_captions(loaded, images, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    top_k = experiment.ranking(args.site, category).top_k(args.k)

    def forward_backward() -> None:
        plain_forward_backward(loaded, images, captions, args.batch_size)

    def rank() -> None:
        importance(loaded, site, images, captions, options=settings.ranking, batch_size=args.batch_size)

    def generate(mode: str | None) -> Callable[[], object]:
        def run() -> None:
            if mode is None:
                generate_captions(loaded, images, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
                return
            with NeuronMask(site, top_k, mode=mode):
                generate_captions(loaded, images, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

        return run

    ranking = side_by_side(
        {"forward+backward": forward_backward, "CAN ranking": rank}, args.repeats, loaded.device
    )
    generation = side_by_side(
        {
            "unmasked": generate(None),
            "masked (weight edit)": generate("weight"),
            "masked (hooks)": generate("hook"),
        },
        args.repeats,
        loaded.device,
    )
    per_image = {name: seconds / len(images) for name, seconds in ranking.items()}
    print(
        f"model {args.model} ({loaded.dtype}, {loaded.device}), site {args.site} ({site.n_layers}×{site.width}), "
        f"{len(images)} images, batch {args.batch_size}, {args.max_new_tokens} new tokens, k={args.k}, "
        f"median of {args.repeats}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        tabulate(
            [
                ("plain forward+backward", f"{per_image['forward+backward'] * 1e3:.2f} ms/image", "1.00"),
                (
                    "CAN ranking (fwd + activation grads)",
                    f"{per_image['CAN ranking'] * 1e3:.2f} ms/image",
                    f"{per_image['CAN ranking'] / per_image['forward+backward']:.2f}",
                ),
            ],
            headers=("ranking", "time", "ratio"),
            tablefmt="github",
        )
    )
    print()
    print(
        tabulate(
            [
                (name, f"{seconds * 1e3:.1f} ms", f"{seconds / generation['unmasked']:.2f}")
                for name, seconds in generation.items()
            ],
            headers=("generation", f"time ({len(images)} captions)", "ratio vs unmasked"),
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
