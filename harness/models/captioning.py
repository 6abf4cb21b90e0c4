"""Batched greedy captioning and teacher-forced caption scoring for processor-driven VLMs, and the same for
text-only language models, whose prompts are token ids (a text's opening) instead of images.

Generation pads prompts on the left (as HF generation needs); scoring rebuilds each sequence as prompt + caption
and pads on the right, so every token keeps the positions it had when it was generated.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache

import torch

from harness.core.metrics import is_degenerate
from harness.models.image_encoding import EncodedImage, with_encoded_images
from harness.models.prompts import Prompt, encode_prompts, eos_token_ids, pad_id, placeholder_token_ids


@dataclass(frozen=True)
class Caption:
    """A generated caption (or a text continuation): its tokens (with the final EOS when the model emitted one)
    and its text. A given text that is scored, not generated, has no self NLL."""

    token_ids: tuple[int, ...]
    ended: bool  # the model emitted EOS (rather than running into max_new_tokens)
    text: str
    self_nll: float | None  # mean NLL of its own tokens under the model (and mask) that generated it

    @property
    def degenerate(self) -> bool:
        content = self.token_ids[:-1] if self.ended else self.token_ids
        return is_degenerate(content, self.text)


@dataclass
class TeacherForcedBatch:
    """prompt + caption sequences, right-padded, with what is needed to score the caption tokens."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask and the processor's image tensors
    prompt_lengths: torch.Tensor  # [B] tokens before the caption (image tokens included)
    total_lengths: torch.Tensor  # [B] prompt + caption tokens

    @property
    def first_target(self) -> int:
        return int(self.prompt_lengths.min())

    @property
    def last_target(self) -> int:
        return int(self.total_lengths.max()) - 1

    def target_mask(self) -> torch.Tensor:
        """[B, K] True where position first_target + j holds a caption token (the scored tokens)."""
        positions = torch.arange(self.first_target, self.last_target + 1, device=self.prompt_lengths.device)
        return (positions >= self.prompt_lengths[:, None]) & (positions < self.total_lengths[:, None])

    def position_weights(self, which: str) -> torch.Tensor:
        """[B, T] weights that average each row's `which` positions (rows sum to 1)."""
        mask = self.position_mask(which).float()
        return mask / mask.sum(1, keepdim=True)

    def position_mask(self, which: str) -> torch.Tensor:
        """[B, T] positions whose activations are aggregated: 'all' real tokens, or 'scored' (predicting a caption
        token)."""
        if which == "all":
            return self.inputs["attention_mask"].bool()
        positions = torch.arange(self.inputs["input_ids"].shape[1], device=self.prompt_lengths.device)
        return (positions >= self.prompt_lengths[:, None] - 1) & (positions < self.total_lengths[:, None] - 1)


ChunkMask = Callable[[slice], AbstractContextManager]  # the mask over one batch of rows (per-row masks)


@torch.no_grad()
def generate_captions(
    loaded,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    batch_size: int,
    chunk_mask: ChunkMask | None = None,
    encoded_images: Sequence[EncodedImage] | None = None,
) -> list[Caption]:
    """Greedy captions (or continuations); each one's self NLL comes from the generation logits (no extra forward
    pass). `chunk_mask(rows)` is entered around each batch (e.g. a per-row mask of those rows). `encoded_images`
    (aligned with `prompts`) stand in for the images' pixels: the encoder is not run again."""
    eos = eos_token_ids(loaded)
    captions: list[Caption] = []
    for start in range(0, len(prompts), batch_size):
        rows = slice(start, min(start + batch_size, len(prompts)))
        batch = encode_prompts(loaded, prompts[rows])
        if encoded_images is not None:
            batch = with_encoded_images(loaded, batch, encoded_images[rows])
        with chunk_mask(rows) if chunk_mask is not None else nullcontext():
            output = _generate(loaded, batch, max_new_tokens)
        new_tokens = output.sequences[:, batch["input_ids"].shape[1] :]
        logprobs = torch.stack(output.logits, dim=1).float().log_softmax(-1)
        token_logprobs = logprobs.gather(-1, new_tokens[..., None]).squeeze(-1)
        for row in range(new_tokens.shape[0]):
            tokens = new_tokens[row].tolist()
            end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
            ids = tuple(tokens[:end])
            captions.append(
                Caption(
                    token_ids=ids,
                    ended=ids[-1] in eos,
                    text=loaded.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    self_nll=float(-token_logprobs[row, :end].mean()),
                )
            )
    return captions


def _generate(loaded, batch: dict[str, object], max_new_tokens: int):
    return loaded.model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=pad_id(loaded),
        suppress_tokens=placeholder_token_ids(loaded) or None,
    )


def teacher_forced_batches(
    loaded, prompts: Sequence[Prompt], captions: Sequence[Caption], batch_size: int
) -> Iterator[TeacherForcedBatch]:
    """teacher_forced_batch over consecutive slices of `batch_size` prompts."""
    for start in range(0, len(prompts), batch_size):
        yield teacher_forced_batch(
            loaded, prompts[start : start + batch_size], captions[start : start + batch_size]
        )


def teacher_forced_batch(loaded, prompts: Sequence[Prompt], captions: Sequence[Caption]) -> TeacherForcedBatch:
    """Rebuild prompt + caption sequences (right-padded) for scoring or gradients."""
    encoded = encode_prompts(loaded, prompts)
    padding = pad_id(loaded)
    prompts = [ids[mask.bool()] for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)]
    sequences = [
        torch.cat([prompt, torch.tensor(caption.token_ids, dtype=prompt.dtype, device=prompt.device)])
        for prompt, caption in zip(prompts, captions, strict=True)
    ]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), padding, dtype=torch.long, device=loaded.device)
    attention = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention[row, : len(sequence)] = 1
    inputs = {name: value for name, value in encoded.items() if name not in ("input_ids", "attention_mask")}
    inputs.update(input_ids=input_ids, attention_mask=attention)
    lengths = lambda seqs: torch.tensor([len(s) for s in seqs], device=loaded.device)  # noqa: E731
    return TeacherForcedBatch(inputs=inputs, prompt_lengths=lengths(prompts), total_lengths=lengths(sequences))


@cache
def _accepts_logits_to_keep(model_cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_cls.forward).parameters


def caption_nll_per_row(loaded, batch: TeacherForcedBatch) -> torch.Tensor:
    """[B] mean NLL (nats) of each caption's tokens; differentiable when grad is enabled."""
    first, last = batch.first_target, batch.last_target
    kwargs = dict(batch.inputs, use_cache=False)
    if _accepts_logits_to_keep(type(loaded.model)):
        # only the positions that predict caption tokens go through lm_head (saves B·T·vocab logits)
        kwargs["logits_to_keep"] = torch.arange(first - 1, last, device=loaded.device)
        logits = loaded.model(**kwargs).logits
    else:
        logits = loaded.model(**kwargs).logits[:, first - 1 : last]
    targets = batch.inputs["input_ids"][:, first : last + 1]
    token_logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    mask = batch.target_mask()
    return -(token_logprobs * mask).sum(1) / mask.sum(1)


@torch.no_grad()
def score_captions(
    loaded,
    prompts: Sequence[Prompt],
    captions: Sequence[Caption],
    *,
    batch_size: int,
    chunk_mask: ChunkMask | None = None,
) -> list[float]:
    """Mean NLL of each caption under `loaded` as it stands (unmasked: the reference PPL; masked: self PPL);
    `chunk_mask(rows)` is entered around each batch, as in generate_captions."""
    scores: list[float] = []
    for start, batch in enumerate(teacher_forced_batches(loaded, prompts, captions, batch_size)):
        rows = slice(start * batch_size, min((start + 1) * batch_size, len(prompts)))
        with chunk_mask(rows) if chunk_mask is not None else nullcontext():
            scores.extend(caption_nll_per_row(loaded, batch).tolist())
    return scores
