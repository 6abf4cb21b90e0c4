"""What a model is prompted with, as tensors: a VLM's images through its processor and prompt template, a text
model's token ids left-padded (as generation needs); and the special tokens generation and scoring must know."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image


def eos_token_ids(loaded) -> set[int]:
    configured = loaded.model.generation_config.eos_token_id
    if configured is None:
        configured = loaded.tokenizer.eos_token_id
    return set(configured) if isinstance(configured, list | tuple) else {int(configured)}


def placeholder_token_ids(loaded) -> list[int]:
    """Tokens that stand for image features: a caption containing one could not be scored (nor means anything).
    LLaVA's processor names it; InstructBLIP's only its model config does."""
    image_token_id = getattr(loaded.processor, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(loaded.model.config, "image_token_id", None)
    return [int(image_token_id)] if image_token_id is not None else []


@dataclass(frozen=True)
class VisualPrompt:
    """An image with an instruction of its own (a question, say), put in the model's prompt template in place of
    its registered instruction."""

    image: Image.Image
    instruction: str


# an image (prompted by the model's template and instruction), an image with its own instruction, or a text's
# token ids
Prompt = Image.Image | VisualPrompt | tuple[int, ...]


def prompt_text(loaded, prompt: Image.Image | VisualPrompt) -> str:
    """The text a visual prompt is given with: the model's template around the prompt's own instruction, or around
    the registered one."""
    if isinstance(prompt, VisualPrompt):
        return loaded.spec.prompt_template.format(instruction=prompt.instruction)
    return loaded.spec.prompt


def encode_prompts(loaded, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
    """The processor's batch (left-padded prompt ids, attention mask, pixel values …) on the model's device; for
    token-id prompts (text-only models), the ids left-padded."""
    if all(isinstance(prompt, tuple) for prompt in prompts):
        return _left_padded(loaded, prompts)
    images = [prompt.image if isinstance(prompt, VisualPrompt) else prompt for prompt in prompts]
    texts = [prompt_text(loaded, prompt) for prompt in prompts]
    encoded = loaded.processor(images=images, text=texts, return_tensors="pt", padding=True)
    batch = {}
    for name, value in encoded.items():
        if torch.is_tensor(value):
            value = value.to(loaded.device)
            batch[name] = value.to(loaded.dtype) if value.is_floating_point() else value
    return batch


def _left_padded(loaded, prompts: Sequence[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_id(loaded), dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
    return {"input_ids": input_ids.to(loaded.device), "attention_mask": attention.to(loaded.device)}


def pad_id(loaded) -> int:
    pad = loaded.tokenizer.pad_token_id
    return pad if pad is not None else min(eos_token_ids(loaded))
