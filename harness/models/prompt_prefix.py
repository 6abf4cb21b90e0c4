"""Reference scoring that forwards only the caption tokens: the unmasked model's KV cache of the prompts (image
tokens and instruction) is computed once per batch of images and reused by every masked caption scored on them.

A VLM's prompt is most of each scored sequence (LLaVA-1.5: 576 image tokens and the instruction, before a caption
of at most 64), and the reference model never changes, so re-running it at every evaluated k is pure waste. The
prefix is forwarded exactly as generation forwards it (left-padded, positions counted over real tokens), so the
scores equal the full teacher-forced forward up to float rounding.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch

from harness.models.captioning import Caption
from harness.models.prompts import Prompt, encode_prompts, pad_id


@dataclass(frozen=True)
class PromptPrefix:
    """The unmasked model after one batch of prompts: what caption tokens attend to, and what predicts each
    caption's first token."""

    attention_mask: torch.Tensor  # [B, P] the left-padded prompts
    real_lengths: torch.Tensor  # [B] prompt tokens per row (the first caption token's position)
    cache: object  # transformers Cache of the P prompt positions; copied before each use, never changed
    next_logits: torch.Tensor  # [B, V] float32 logits of the last prompt position

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]


@cache
def _forward_takes_cache(model_cls: type) -> bool:
    parameters = inspect.signature(model_cls.forward).parameters
    return {"past_key_values", "position_ids", "logits_to_keep"} <= set(parameters)


def supports_prefix_reuse(loaded) -> bool:
    """Whether the model's own forward continues from a KV cache with given positions (LLaVA, LLaVA-NeXT). A model
    whose forward does not (InstructBLIP re-encodes the image at every call) is scored on full sequences."""
    return "images" in loaded.family.inputs and _forward_takes_cache(type(loaded.model))


@torch.no_grad()
def encode_prefixes(loaded, prompts: Sequence[Prompt], batch_size: int) -> list[PromptPrefix]:
    """The prompts' prefixes in consecutive batches of `batch_size` (the model as it stands: call it unmasked)."""
    prefixes = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(loaded, prompts[start : start + batch_size])
        attention = batch["attention_mask"]
        output = loaded.model(
            **batch, position_ids=_generation_positions(attention), use_cache=True, logits_to_keep=1
        )
        prefixes.append(
            PromptPrefix(attention, attention.sum(1), output.past_key_values, output.logits[:, -1].float())
        )
    return prefixes


def _generation_positions(attention: torch.Tensor) -> torch.Tensor:
    """Positions as generation assigns them to a left-padded batch: counted over real tokens."""
    return (attention.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def score_after_prefixes(loaded, prefixes: Sequence[PromptPrefix], captions: Sequence[Caption]) -> list[float]:
    """Mean NLL of each caption under the unmasked model, `captions` aligned with the prefixes' rows."""
    expected = sum(prefix.rows for prefix in prefixes)
    if len(captions) != expected:
        raise ValueError(f"{len(captions)} captions for {expected} prompt prefixes: they must be aligned")
    scores, start = [], 0
    for prefix in prefixes:
        scores.extend(_score_batch(loaded, prefix, captions[start : start + prefix.rows]))
        start += prefix.rows
    return scores


def _score_batch(loaded, prefix: PromptPrefix, captions: Sequence[Caption]) -> list[float]:
    width = max(len(caption.token_ids) for caption in captions)
    device = prefix.attention_mask.device
    ids = torch.full((len(captions), width), pad_id(loaded), dtype=torch.long, device=device)
    present = torch.zeros_like(ids)
    for row, caption in enumerate(captions):
        ids[row, : len(caption.token_ids)] = torch.tensor(caption.token_ids, device=device)
        present[row, : len(caption.token_ids)] = 1
    output = loaded.model(
        input_ids=ids,
        attention_mask=torch.cat([prefix.attention_mask, present], dim=1),
        position_ids=prefix.real_lengths[:, None] + torch.arange(width, device=device),
        past_key_values=copy.deepcopy(prefix.cache),
        use_cache=True,
        logits_to_keep=torch.arange(width - 1, device=device),  # the last caption position predicts nothing
    )
    predicting = torch.cat([prefix.next_logits[:, None], output.logits.float()], dim=1)
    token_logprobs = predicting.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    return (-(token_logprobs * present).sum(1) / present.sum(1)).tolist()
