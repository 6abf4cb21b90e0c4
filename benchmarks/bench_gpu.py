"""Full-size figures on one accelerator, with random weights (no hub, no checkpoint): LLaVA-1.5-7b's architecture
(CLIP ViT-L/14 at 336 px, 576 image tokens; a Llama of 4096 × 11008 × 32 layers, 32 064-token vocabulary) built
in bfloat16 straight on the device, measured side by side in one run:

1. CAN ranking images/s vs the model's own forward+backward (parameter gradients on) of the same batches;
2. one evaluation (greedy captions, reference scoring after cached prefixes, CLIP) vs its masked generate alone;
3. the k-parallel pass: P ks in one batched pass vs the same P ks one pass each, at several batch sizes.

Random weights make the captions meaningless (and rarely end early, so every caption runs to the token limit):
only the costs mean something. `--scale tiny` runs the same code on a small LLaVA, e.g. to check it on a CPU.

Usage: python benchmarks/bench_gpu.py [--scale full] [--images 16] [--batch-sizes 8,16] [--parallel 3]
       [--max-new-tokens 64] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path

import torch
from bench_core import plain_forward_backward, side_by_side
from tabulate import tabulate

from harness.core.paths import default_cache_dir
from harness.models.captioning import generate_captions
from harness.models.families import get_family
from harness.models.loading import LoadedModel
from harness.models.masking import mask_neurons
from harness.models.registry import get_model_spec
from harness.runner.experiment import TOP_K_ZERO, Experiment
from harness.runner.probes.captioning import CaptioningProbe
from harness.runner.ranking_cache import RankingCache
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ranking import importance
from harness.zoo.tiny_llava import generating_with, llava_parts

SCALES = {
    "full": dict(text_hidden=4096, text_intermediate=11008, text_layers=32, text_heads=32, vision_hidden=1024,
                 vision_intermediate=4096, vision_layers=24, vision_heads=16, image_size=336, patch_size=14,
                 vocabulary_size=32064, max_positions=4096, initializer_range=0.02),
    "tiny": dict(text_hidden=128, text_intermediate=344, text_layers=2, text_heads=4, vision_hidden=64,
                 vision_layers=2, image_size=56, patch_size=14, vocabulary_size=1024, initializer_range=0.02),
}  # fmt: skip
SITE, CATEGORY = "lm.down_proj", "circle"


def random_llava(scale: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A LoadedModel of random weights initialised on `device` (a 7B model never passes through host memory)."""
    import transformers

    config, processor = llava_parts(**SCALES[scale])
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model = generating_with(model, processor.tokenizer).eval().requires_grad_(False)
    spec = dataclasses.replace(get_model_spec("tiny-llava"), name=f"random-llava-1.5-7b-{scale}")
    return LoadedModel(
        spec=spec, model=model, processor=processor, family=get_family("llava"), device=device, dtype=dtype,
        path=Path("/random-weights"), weights_digest=f"random-{scale}-seed-0", checkpoint_id=spec.name,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-sizes", default="8,16", help="comma-separated --can-batch-size values")
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = random_llava(args.scale, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"{loaded.spec.name} ({sum(p.numel() for p in loaded.model.parameters()) / 1e9:.2f} B parameters, "
          f"{dtype}) on {name}; torch {torch.__version__}", flush=True)  # fmt: skip
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="can-bench-gpu-") as rankings:
        for batch_size in batch_sizes:
            settings = HarnessSettings(
                cache_dir=default_cache_dir(), device=args.device, batch_size=batch_size,
                max_new_tokens=args.max_new_tokens, max_images=args.images, categories=(CATEGORY,),
            )  # fmt: skip
            session = HarnessSession(dataclasses.replace(settings, clip=get_model_spec("smol-llava").clip))
            probe = CaptioningProbe(loaded, session.settings, session.sources, session)
            experiment = Experiment(probe, session.settings, RankingCache(rankings))
            figures |= {f"{key} @ batch {batch_size}": value for key, value in measure(args, experiment).items()}
    rows = [[key, f"{value:.3g}"] for key, value in figures.items()]
    print(tabulate(rows, headers=["figure", "value"], tablefmt="github"))
    if args.json:
        args.json.write_text(json.dumps({"model": loaded.spec.name, "device": name, **figures}, indent=2))


def measure(args, experiment: Experiment) -> dict[str, float]:
    loaded, settings, site = experiment.loaded, experiment.settings, experiment.site(SITE)
    images = experiment.samples(CATEGORY)
    captions = experiment.baseline(CATEGORY).captions
    batch_size = settings.batch_size
    ranking = side_by_side(
        {
            "forward+backward": lambda: plain_forward_backward(loaded, images, captions, batch_size),
            "CAN ranking": lambda: importance(
                loaded, site, images, captions, options=settings.ranking, batch_size=batch_size
            ),
        },
        args.repeats,
        loaded.device,
    )
    experiment.measure(SITE, CATEGORY, args.k)  # the ranking, prompt prefixes and image features, once
    mask = mask_neurons(site, experiment.selection(SITE, CATEGORY, args.k, TOP_K_ZERO), mode=settings.mask_mode)

    def generate_alone() -> None:
        with mask:
            generate_captions(loaded, images, max_new_tokens=settings.max_new_tokens, batch_size=batch_size)

    ks = [args.k * 2**index for index in range(args.parallel)]
    variants = [(k, TOP_K_ZERO) for k in ks]
    evaluation = side_by_side(
        {
            "generate": generate_alone,
            "evaluation": lambda: experiment.measure(SITE, CATEGORY, args.k),
            "P ks one pass each": lambda: [experiment.measure(SITE, CATEGORY, k) for k in ks],
            "P ks in one pass": lambda: experiment.measure_many(SITE, CATEGORY, variants),
        },
        args.repeats,
        loaded.device,
    )
    timings = ", ".join(f"{what} {seconds:.2f} s" for what, seconds in (ranking | evaluation).items())
    print(f"batch {batch_size}: {timings}", flush=True)
    return {
        "CAN ranking images/s": len(images) / ranking["CAN ranking"],
        "forward+backward images/s": len(images) / ranking["forward+backward"],
        "CAN ranking / forward+backward": ranking["CAN ranking"] / ranking["forward+backward"],
        "evaluation / its masked generate": evaluation["evaluation"] / evaluation["generate"],
        f"k-parallel speed-up, P={args.parallel}": evaluation["P ks one pass each"]
        / evaluation["P ks in one pass"],
    }


if __name__ == "__main__":
    main()
