"""Fine-tune smol-llava's projector to answer questions about the synthetic world as well as caption it:
smol-llava-qa, SmolLM2-135M-Instruct still frozen inside.

    python -m training.smol_llava_qa_training --out harness/zoo/smol_llava_qa   # see the model card for the time

smol-llava was trained on captions alone, and answers the vqa probe's questions at chance. This starts from its
committed parts (vision tower and projector) and trains the projector alone on a mix of the world's captions and
question-answer pairs (the vqa probe's own questions, each answered by one word), the loss the teacher-forced NLL
of the caption or answer through the frozen language model. The language model's tensors are checked bit for bit
after training; the parts are written to `--out`, and the assembled checkpoint's held-out question accuracy and
caption quality go into `quality.json` and `MODEL_CARD.md` next to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.data import world
from harness.runner.probes.vqa import QUESTIONS
from harness.zoo import smol_llava
from training.smol_llava_training import language_folder, prompted_examples, train_and_write
from training.synth_training import add_recipe_options, machine_description, recipe_from_options

QA_FOLDER = Path(smol_llava.__file__).parent / "smol_llava_qa"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the fine-tuned weights (recorded in the model card)."""

    seed: int = 0
    train_images: int = 1536
    heldout_images: int = 192
    threads: int = 2
    steps: int = 240
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 20
    captions_per_image: int = 1  # each rendering's caption, beside its questions, so that it still captions
    train_vision_tower: bool = False  # the projector alone: smol-llava's tower already sees every attribute
    vision_lr: float = 0.0


def starting_model(lm_folder: Path):
    """smol-llava as committed: its parts around the frozen language model, and its processor."""
    parts, config, settings = smol_llava.load_parts(smol_llava.PARTS_FOLDER, lm_folder)
    model = smol_llava.assemble(lm_folder, parts, config)
    return model, smol_llava.build_processor(smol_llava.image_tokenizer(lm_folder), settings), settings


def training_pairs(recipe: Recipe) -> list[tuple[object, str, str]]:
    """(image, instruction, target) of every training rendering: its caption, and each question with its answer,
    in a seeded order."""
    pairs = []
    for scene, image in world.sample("train", recipe.train_images, seed=recipe.seed):
        pairs += [(image, smol_llava.INSTRUCTION, scene.caption)] * recipe.captions_per_image
        pairs += [(image, question.text, getattr(scene, question.attribute)) for question in QUESTIONS]
    random.Random(recipe.seed).shuffle(pairs)
    return pairs


def measure(parts_folder: Path, lm_folder: Path, recipe: Recipe, log) -> dict:
    """The assembled checkpoint on held-out renderings: each question's answer accuracy (as the vqa probe judges
    an answer) and the caption quality."""
    from harness.models.captioning import generate_captions
    from harness.models.loading import load_model
    from harness.models.prompts import VisualPrompt
    from harness.models.registry import ModelSpec
    from training.synth_quality import caption_quality

    heldout = world.sample("heldout", recipe.heldout_images, seed=recipe.seed)
    with tempfile.TemporaryDirectory() as folder:
        smol_llava.build_smol_llava(Path(folder), lm_folder, parts_folder, name="smol-llava-qa")
        spec = ModelSpec(
            name="smol-llava-qa", source=folder, prompt_template=smol_llava.PROMPT_TEMPLATE,
            instruction=smol_llava.INSTRUCTION,
        )  # fmt: skip
        loaded = load_model(spec, cache_dir=Path(folder), device="cpu", dtype="float32")
        log(f"measuring on {len(heldout)} held-out renderings")
        quality = caption_quality(loaded, heldout, batch_size=32)
        per_question, examples_shown = {}, []
        for question in QUESTIONS:
            prompts = [VisualPrompt(image, question.text) for _, image in heldout]
            answers = generate_captions(loaded, prompts, max_new_tokens=8, batch_size=32)
            truths = [getattr(scene, question.attribute) for scene, _ in heldout]
            right = [question.correct(a.text, truth) for truth, a in zip(truths, answers, strict=True)]
            per_question[question.attribute] = sum(right) / len(right)
            examples_shown.append(f"{question.text} → {answers[0].text!r}")
    quality["vqa"] = {
        "accuracy": sum(per_question.values()) / len(per_question),
        "per_question": per_question,
        "chance": sum(1 / len(question.answers) for question in QUESTIONS) / len(QUESTIONS),
        "examples": examples_shown,
    }
    return quality


def write_model_card(out: Path, recipe: Recipe, quality: dict, trace: list[float], seconds: dict, frozen: int):
    record = {
        "recipe": dataclasses.asdict(recipe),
        "world_version": world.VERSION,
        "starts_from": f"smol-llava's parts, sha256 {smol_llava.parts_digest()[:16]}",
        "quality_heldout": quality,
        "language_model_tensors_unchanged": frozen,
        "loss_trace_every_10_steps": trace,
        "training_seconds": seconds,
        "machine": machine_description(),
    }
    (out / "quality.json").write_text(json.dumps(record, indent=2) + "\n")
    vqa = quality["vqa"]
    lines = [
        "# smol-llava-qa: smol-llava fine-tuned to answer questions about the synthetic world",
        "",
        "The same `LlavaForConditionalGeneration` as smol-llava (CLIP vision tower → LLaVA-1.5 projector → "
        "**SmolLM2-135M-Instruct**), its projector fine-tuned so that the vqa probe's questions get answers.",
        "",
        "## What is real and what was trained here",
        "",
        "- **Language model: real, pretrained, frozen**, exactly as in smol-llava (the smollm2-135m checkpoint); "
        f"all {frozen} of its tensors checked bit for bit after training.",
        f"- **Vision tower**: smol-llava's, unchanged (parts sha256 {smol_llava.parts_digest()[:16]}).",
        "- **Projector: fine-tuned here** by `python -m training.smol_llava_qa_training` "
        f"(seed {recipe.seed}) from smol-llava's, {recipe.steps} AdamW steps of batch {recipe.batch}, "
        f"peak lr {recipe.lr}, on "
        f"{recipe.train_images} training renderings of the synthetic world (version {world.VERSION}), each with "
        f"its caption ({recipe.captions_per_image}×) and the {len(QUESTIONS)} questions of the vqa probe "
        "answered in one word; loss: the teacher-forced NLL of the caption or answer through the frozen "
        "language model.",
        "",
        f"## Held-out quality ({quality['images']} renderings from a disjoint random stream)",
        "",
        f"- answers: accuracy {vqa['accuracy']:.1%} "
        f"({', '.join(f'{k} {v:.0%}' for k, v in vqa['per_question'].items())}) against a chance level of "
        f"{vqa['chance']:.1%}; e.g. {'; '.join(vqa['examples'])}",
        f'- captions (instruction "{smol_llava.INSTRUCTION}"): exact match {quality["exact_match"]:.1%}, '
        f"attribute accuracy {quality['attribute_accuracy']:.1%}",
        "",
        f"Training took {seconds['training']:.0f} s, {seconds['total']:.0f} s end to end with data and "
        f"measurement, on {record['machine']}. Loss trace, recipe and figures: `quality.json`.",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=QA_FOLDER)
    parser.add_argument("--cache-dir", type=Path, default=None, help="harness cache (default $CAN_HARNESS_CACHE)")
    parser.add_argument(
        "--no-measure", action="store_true", help="write the parts only (for reproducibility checks)"
    )
    add_recipe_options(parser, Recipe)
    args = parser.parse_args(argv)
    from harness.core.paths import default_cache_dir

    recipe = recipe_from_options(args, Recipe)
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    log = functools.partial(print, flush=True)
    begun = time.perf_counter()
    lm_folder = language_folder(args.cache_dir or default_cache_dir())
    model, processor, settings = starting_model(lm_folder)
    data = prompted_examples(processor, training_pairs(recipe))
    log(f"training on {len(data['input_ids'])} captions and answers, sequences of {data['input_ids'].shape[1]}")
    return train_and_write(model, data, recipe, settings, lm_folder, args, measure, write_model_card, begun, log)


if __name__ == "__main__":
    raise SystemExit(main())
