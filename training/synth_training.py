"""Train the embedded default models on the synthetic world: a LLaVA captioner and an open_clip scorer.

    python -m training.synth_training --out harness/zoo/synth   # ~7 min on 2 CPU cores (see the model card)

Both are trained from scratch with a fixed seed and written in their libraries' own formats (`save_pretrained`,
open_clip's `local-dir:` folder), then loaded back through the harness's loaders and measured on held-out
renderings; the figures go into `quality.json` and `MODEL_CARD.md` next to the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.data import world
from harness.models.registry import CAPTION_INSTRUCTION, LLAVA_15_PROMPT, ClipSpec, ModelSpec
from harness.zoo import SYNTH_FOLDER
from harness.zoo.tiny_llava import build_word_tokenizer, tiny_llava, tiny_vocabulary

LLAVA_FOLDER, CLIP_FOLDER, PLANTED_FOLDER = "synth-llava", "synth-clip", "planted-llava"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights (recorded in the model card)."""

    seed: int = 0
    train_images: int = 3072
    heldout_images: int = 384
    threads: int = 2
    image_size: int = 48  # what both vision towers see (the world renders 64×64; 32 loses small shapes)
    patch_size: int = 8
    # captioner: LLaVA = CLIP vision tower + Llama language model
    text_hidden: int = 128
    text_intermediate: int = 512
    text_layers: int = 4
    vision_hidden: int = 64
    vision_layers: int = 3
    llava_steps: int = 1500
    llava_batch: int = 48
    llava_lr: float = 2e-3
    # scorer: open_clip CLIP with a word-level Hugging Face tokenizer
    clip_width: int = 64
    clip_layers: int = 2
    clip_embed_dim: int = 64
    clip_steps: int = 1500
    clip_batch: int = 96
    clip_lr: float = 2e-3
    # planted copy: one down_proj channel of language-model layer 0 carries a massive constant
    planted_layer: int = 0
    planted_scale: float = 300.0  # the constant, in units of the residual stream's mean RMS
    planted_steps: int = 300
    planted_lr: float = 5e-4


def add_recipe_options(parser: argparse.ArgumentParser, recipe_class: type) -> None:
    """One command-line option per recipe field (`--train-images`; a bool field as `--x` / `--no-x`)."""
    for field in dataclasses.fields(recipe_class):
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)


def recipe_from_options(args: argparse.Namespace, recipe_class: type):
    return recipe_class(**{field.name: getattr(args, field.name) for field in dataclasses.fields(recipe_class)})


def machine_description() -> str:
    """Where weights were trained (the model cards say it: thread count and torch build change the bits)."""
    return f"{platform.machine()} / {torch.get_num_threads()} torch threads / torch {torch.__version__}"


def lr_schedule(step: int, total: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def minibatches(count: int, batch: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index batches drawn from seeded permutations of range(count)."""
    order = torch.randperm(count, generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + batch > count:
            order, cursor = torch.randperm(count, generator=generator), 0
        yield order[cursor : cursor + batch]
        cursor += batch


def optimise(
    parameters, loss_of: Callable[[torch.Tensor], torch.Tensor], *, count: int, steps: int, batch: int, lr: float,
    seed: int, log: Callable[[str], None], warmup: int = 50, log_every: int = 50,
) -> list[float]:  # fmt: skip
    """AdamW over seeded minibatches; returns the loss every `log_every` steps. `parameters` may be parameter
    groups with their own peak `lr` (each follows the same schedule, scaled to its peak)."""
    parameters = list(parameters)
    if not parameters or not isinstance(parameters[0], dict):
        parameters = [{"params": [p for p in parameters if p.requires_grad], "lr": lr}]
    for group in parameters:
        group["peak_lr"] = group["lr"]
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    trained = [p for group in optimiser.param_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(seed)
    trace = []
    for step, indices in enumerate(minibatches(count, batch, steps, generator)):
        for group in optimiser.param_groups:
            group["lr"] = lr_schedule(step, steps, group["peak_lr"], warmup)
        loss = loss_of(indices)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        if step % log_every == 0 or step == steps - 1:
            trace.append(round(loss.item(), 4))
            log(f"  step {step:4d}/{steps}  loss {trace[-1]:.4f}")
    return trace


def caption_examples(processor, pairs) -> dict[str, torch.Tensor]:
    """input_ids (LLaVA-1.5 prompt + caption + EOS), labels (-100 outside the caption) and pixel_values."""
    prompt = LLAVA_15_PROMPT.format(instruction=CAPTION_INSTRUCTION)
    encoded = processor(images=[image for _, image in pairs], text=[prompt] * len(pairs), return_tensors="pt")
    tokenizer = processor.tokenizer
    captions = tokenizer([scene.caption for scene, _ in pairs], add_special_tokens=False)["input_ids"]
    if len({len(ids) for ids in captions}) != 1:
        raise ValueError("the world's captions must all have the same token length (no padding in training)")
    caption_ids = torch.tensor([[*ids, tokenizer.eos_token_id] for ids in captions])
    input_ids = torch.cat([encoded["input_ids"], caption_ids], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -caption_ids.shape[1] :] = caption_ids
    return {"input_ids": input_ids, "labels": labels, "pixel_values": encoded["pixel_values"]}


def fit_captioner(model, examples: dict, *, steps: int, batch: int, lr: float, seed: int, log) -> list[float]:
    """Teacher-forced caption NLL (caption tokens and EOS only) on the LLaVA-1.5 prompt."""

    def loss_of(indices: torch.Tensor) -> torch.Tensor:
        return model(**{name: tensor[indices] for name, tensor in examples.items()}).loss

    model.train()
    trace = optimise(
        model.parameters(), loss_of, count=len(examples["input_ids"]), steps=steps, batch=batch, lr=lr, seed=seed,
        log=log,
    )  # fmt: skip
    model.eval()
    return trace


def train_llava(recipe: Recipe, pairs, log: Callable[[str], None]):
    """A LLaVA trained from scratch to caption the world."""
    model, processor = tiny_llava(
        seed=recipe.seed,
        text_hidden=recipe.text_hidden,
        text_intermediate=recipe.text_intermediate,
        text_layers=recipe.text_layers,
        vision_hidden=recipe.vision_hidden,
        vision_intermediate=4 * recipe.vision_hidden,
        vision_layers=recipe.vision_layers,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        initializer_range=0.02,
    )
    examples = caption_examples(processor, pairs)
    trace = fit_captioner(
        model, examples, steps=recipe.llava_steps, batch=recipe.llava_batch, lr=recipe.llava_lr, seed=recipe.seed,
        log=log,
    )  # fmt: skip
    return model, processor, examples, trace


def plant_critical_channel(model, examples: dict, recipe: Recipe, log: Callable[[str], None]):
    """A copy of the trained captioner in which one residual channel becomes critical by construction.

    The mechanism of real massive activations (Sun et al. 2024): language-model layer `planted_layer`'s down_proj
    gets a bias entry holding a huge constant on the least-used residual channel c, so from then on every RMSNorm
    divides by (almost) that constant. The later norms stop reading channel c and are rescaled to compensate,
    then the copy is fine-tuned (the bias frozen) until it captions as well as before: the network now relies on
    the constant as its normaliser. Zeroing channel c (one down_proj output neuron) removes it, every normalised
    activation grows by the same large factor, and the model collapses; replacing it by its mean is harmless.
    """
    import copy

    config = copy.deepcopy(model.config)
    config.text_config.mlp_bias = True
    planted = type(model)(config)
    missing, unexpected = planted.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not name.endswith("bias") for name in missing):
        raise RuntimeError(f"planting changed more than the MLP biases: {missing=} {unexpected=}")
    language_model = planted.model.language_model
    layers, width = language_model.layers, config.text_config.hidden_size
    with torch.no_grad():
        for layer in layers:
            for projection in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                projection.bias.zero_()
        subset = {name: tensor[:64] for name, tensor in examples.items() if name != "labels"}
        hidden = model(**subset, output_hidden_states=True).hidden_states
        after = torch.stack(hidden[recipe.planted_layer + 1 : -1])  # residual stream after the planted layer
        rms = after.pow(2).mean(-1).sqrt().mean()
        channel = int(after.abs().mean(dim=(0, 1, 2)).argmin())
        value = recipe.planted_scale * float(rms)
        layers[recipe.planted_layer].mlp.down_proj.bias[channel] = value
        rescale = value / (width**0.5 * float(rms))
        norms = [language_model.norm] + [
            norm
            for layer in layers[recipe.planted_layer + 1 :]
            for norm in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        for norm in norms:
            norm.weight.mul_(rescale)
            norm.weight[channel] = 0.0
    for layer in layers:
        for projection in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            projection.bias.requires_grad_(False)
    log(f"planted {value:.1f} on residual channel {channel} (layer {recipe.planted_layer} down_proj); fine-tuning")
    trace = fit_captioner(
        planted, examples, steps=recipe.planted_steps, batch=recipe.llava_batch, lr=recipe.planted_lr,
        seed=recipe.seed + 2, log=log,
    )  # fmt: skip
    return planted, {"layer": recipe.planted_layer, "channel": channel, "value": value}, trace


def clip_tokenizer():
    """Word-level tokenizer over the world's vocabulary that ends every text with `</s>` (pooled by open_clip)."""
    from tokenizers import processors

    tokenizer = build_word_tokenizer(tiny_vocabulary())
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer.padding_side = "right"
    return tokenizer


def clip_config(recipe: Recipe, tokenizer) -> dict:
    return {
        "embed_dim": recipe.clip_embed_dim,
        "vision_cfg": {"image_size": recipe.image_size, "layers": recipe.clip_layers, "width": recipe.clip_width,
                       "head_width": 32, "patch_size": recipe.patch_size},
        "text_cfg": {"context_length": 32, "vocab_size": len(tokenizer), "width": recipe.clip_width, "heads": 2,
                     "layers": recipe.clip_layers, "hf_tokenizer_name": "(this folder)", "pool_type": "eos",
                     "pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id},
    }  # fmt: skip


def train_clip(recipe: Recipe, pairs, log: Callable[[str], None]):
    """Contrastive training against every caption of the world: each image must pick out its own caption among
    all 192 (a full-softmax InfoNCE; in-batch negatives would contain duplicates of the true caption)."""
    import open_clip
    from open_clip.transform import image_transform

    tokenizer = clip_tokenizer()
    config = clip_config(recipe, tokenizer)
    torch.manual_seed(recipe.seed)
    model = open_clip.model.CLIP(**config)
    preprocess = image_transform(recipe.image_size, is_train=False)  # as `local-dir:` loading rebuilds it
    pixels = torch.stack([preprocess(image) for _, image in pairs])
    scenes = world.all_scenes()
    index = {scene: i for i, scene in enumerate(scenes)}
    targets = torch.tensor([index[scene] for scene, _ in pairs])
    texts = tokenizer(
        [scene.caption for scene in scenes], padding="max_length", max_length=32, return_tensors="pt"
    )["input_ids"]

    def loss_of(indices: torch.Tensor) -> torch.Tensor:
        image_features = F.normalize(model.encode_image(pixels[indices]), dim=-1)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        return F.cross_entropy(logits, targets[indices])

    model.train()
    trace = optimise(
        model.parameters(), loss_of, count=len(pairs), steps=recipe.clip_steps, batch=recipe.clip_batch,
        lr=recipe.clip_lr, seed=recipe.seed + 1, log=log,
    )  # fmt: skip
    return model.eval(), config, tokenizer, trace


def save_llava(folder: Path, model, processor) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def save_clip(folder: Path, model, config: dict, tokenizer) -> None:
    """open_clip's `local-dir:` format (config JSON + safetensors) with the tokenizer files beside them."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    payload = {"model_cfg": config, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(payload, indent=2) + "\n")
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    tokenizer.save_pretrained(folder)


def measure(out: Path, recipe: Recipe) -> dict:
    """Load both models back through the harness and measure them on held-out renderings."""
    from harness.models.clip_score import ClipScorer
    from harness.models.loading import load_model
    from training.synth_quality import caption_quality, clip_quality

    heldout = world.sample("heldout", recipe.heldout_images, seed=recipe.seed)
    quality = {}
    with tempfile.TemporaryDirectory() as cache:  # nothing is built: these are local folders
        for folder in (LLAVA_FOLDER, PLANTED_FOLDER):
            spec = ModelSpec(name=folder, source=str(out / folder))
            loaded = load_model(spec, cache_dir=Path(cache), device="cpu", dtype="float32")
            quality[folder] = caption_quality(loaded, heldout)
        clip = ClipScorer(ClipSpec(model_name=f"local-dir:{out / CLIP_FOLDER}", pretrained=None),
                          cache_dir=Path(cache), device=torch.device("cpu"))  # fmt: skip
    quality[CLIP_FOLDER] = clip_quality(clip, heldout)
    return quality


def write_model_card(out: Path, recipe: Recipe, quality: dict, plant: dict, traces: dict, seconds: dict) -> None:
    record = {
        "recipe": dataclasses.asdict(recipe),
        "world_version": world.VERSION,
        "quality_heldout": quality,
        "planted": plant,
        "loss_trace": traces,
        "training_seconds": seconds,
        "machine": machine_description(),
    }
    (out / "quality.json").write_text(json.dumps(record, indent=2) + "\n")
    cap, planted, clip = quality[LLAVA_FOLDER], quality[PLANTED_FOLDER], quality[CLIP_FOLDER]
    lines = [
        "# Synthetic-world models (the harness's embedded default)",
        "",
        "Trained from scratch by `python -m training.synth_training` on the synthetic world of "
        f"`harness/data/world.py` (version {world.VERSION}): one object per 64×64 image; shape "
        f"({', '.join(world.CATEGORIES)}) is the category; colour, size, horizontal position and background "
        "complete the caption, e.g. "
        f"“{world.all_scenes()[0].caption}”. {recipe.train_images} training renderings, "
        f"{recipe.heldout_images} held-out renderings from a disjoint random stream; seed {recipe.seed}.",
        "",
        f"- `{LLAVA_FOLDER}/`: `LlavaForConditionalGeneration` (CLIP vision tower {recipe.vision_layers}×"
        f"{recipe.vision_hidden} on {recipe.image_size}² pixels, Llama language model {recipe.text_layers} "
        f"layers × {recipe.text_hidden}, FFN "
        f"{recipe.text_intermediate}), word-level tokenizer, LLaVA-1.5 prompt. {recipe.llava_steps} AdamW steps, "
        f"batch {recipe.llava_batch}, peak lr {recipe.llava_lr}.",
        f"- `{CLIP_FOLDER}/`: open_clip `CLIP` (ViT {recipe.clip_layers}×{recipe.clip_width} on "
        f"{recipe.image_size}² pixels, text "
        f"transformer {recipe.clip_layers}×{recipe.clip_width}, embed {recipe.clip_embed_dim}), word-level HF "
        f"tokenizer. {recipe.clip_steps} steps, batch {recipe.clip_batch}, contrastive against all "
        f"{len(world.all_scenes())} captions.",
        f"- `{PLANTED_FOLDER}/`: the captioner with one critical channel planted by construction (see "
        f"`plant_critical_channel`): language-model layer {plant['layer']} `down_proj` output channel "
        f"{plant['channel']} carries the constant {plant['value']:.1f} ({recipe.planted_scale:g}× the residual "
        f"stream's mean RMS) that every later RMSNorm now divides by; {recipe.planted_steps} fine-tuning steps.",
        "",
        "## Held-out quality",
        "",
        f"- captions: exact match {cap['exact_match']:.1%}, attribute accuracy {cap['attribute_accuracy']:.1%} "
        f"({', '.join(f'{k} {v:.0%}' for k, v in cap['per_attribute'].items())}), {cap['images']} images",
        f"- planted copy: exact match {planted['exact_match']:.1%}, attribute accuracy "
        f"{planted['attribute_accuracy']:.1%}",
        f"- CLIP: image→caption retrieval top-1 {clip['retrieval_top1']:.1%} among {clip['candidate_captions']} "
        f"captions; mean CLIP score of the true caption {clip['true_caption_score']:.1f} vs "
        f"{clip['other_category_score']:.1f} for captions of other categories",
        "",
        f"Training took {seconds['llava']:.0f} s (captioner) + {seconds['planted']:.0f} s (planted copy) + "
        f"{seconds['clip']:.0f} s (CLIP), {seconds['total']:.0f} s end to end with data and measurement, on "
        f"{record['machine']}. Loss traces, the full recipe and these figures: `quality.json`.",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SYNTH_FOLDER)
    add_recipe_options(parser, Recipe)
    args = parser.parse_args(argv)
    recipe = recipe_from_options(args, Recipe)
    torch.set_num_threads(recipe.threads)
    log = functools.partial(print, flush=True)
    begun = time.perf_counter()
    train = world.sample("train", recipe.train_images, seed=recipe.seed)
    seconds, traces = {}, {}

    started = time.perf_counter()
    log(f"captioner: {recipe.llava_steps} steps")
    model, processor, examples, traces["llava"] = train_llava(recipe, train, log)
    save_llava(args.out / LLAVA_FOLDER, model, processor)
    seconds["llava"] = time.perf_counter() - started

    started = time.perf_counter()
    log(f"planted copy: {recipe.planted_steps} steps")
    planted, plant, traces["planted"] = plant_critical_channel(model, examples, recipe, log)
    save_llava(args.out / PLANTED_FOLDER, planted, processor)
    seconds["planted"] = time.perf_counter() - started

    started = time.perf_counter()
    log(f"CLIP: {recipe.clip_steps} steps")
    clip, config, tokenizer, traces["clip"] = train_clip(recipe, train, log)
    save_clip(args.out / CLIP_FOLDER, clip, config, tokenizer)
    seconds["clip"] = time.perf_counter() - started

    quality = measure(args.out, recipe)
    seconds["total"] = time.perf_counter() - begun
    write_model_card(args.out, recipe, quality, plant, traces, seconds)
    print((args.out / "MODEL_CARD.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
