"""Tiny text-only causal LMs built offline to test the text-only path (the PCICN setting): a Llama with a
word-level tokenizer that knows every word of the built-in paragraph and adds a BOS, and a Qwen2 with a real
Qwen2Tokenizer (byte-level BPE trained on that paragraph, no BOS, EOS = pad, as the Qwen2.5 base models have).

Like tiny LLaVA, the weights are random with std 0.2 so that masking visibly moves the outputs; their texts and
thresholds mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from harness.data.texts import BUILTIN_PARAGRAPH
from harness.zoo.tiny_llava import SPECIAL_TOKENS, build_word_tokenizer, generating_with, tiny_decoder_config

ARCHITECTURES = ("llama", "qwen2")


def paragraph_vocabulary() -> list[str]:
    """Special tokens first (ids 0-3), then every word and punctuation mark of the built-in paragraph."""
    words = [*SPECIAL_TOKENS]
    for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(BUILTIN_PARAGRAPH):
        if word not in words:
            words.append(word)
    return words


def paragraph_bpe_tokenizer(vocab_size: int = 320):
    """A Qwen2Tokenizer whose byte-level BPE vocabulary and merges are trained on the built-in paragraph
    (transformers maps a qwen2 checkpoint to Qwen2Tokenizer whatever its tokenizer.json says, so the tiny model
    must carry one it can rebuild)."""
    import json

    from transformers import Qwen2Tokenizer

    end = "<|endoftext|>"
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[end], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([BUILTIN_PARAGRAPH], trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in model["merges"]]
    return Qwen2Tokenizer(vocab=model["vocab"], merges=merges, padding_side="left")


def tiny_causal_lm(
    architecture: str, *, seed: int = 0, hidden: int = 64, intermediate: int = 128, layers: int = 2
):
    """A fresh (model, tokenizer) pair: LlamaForCausalLM with a BOS-adding tokenizer, or Qwen2ForCausalLM with
    none."""
    import transformers

    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown tiny causal LM architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}"
        )
    if architecture == "llama":
        tokenizer = build_word_tokenizer(paragraph_vocabulary(), image_token=False)
    else:
        tokenizer = paragraph_bpe_tokenizer()
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[architecture]
    config = tiny_decoder_config(
        tokenizer,
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=4,
        kv_heads=2,
        initializer_range=0.2,
        config_class=config_class,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return generating_with(transformers.AutoModelForCausalLM.from_config(config), tokenizer), tokenizer


def build_tiny_causal_lm(folder: Path, architecture: str, *, seed: int = 0) -> None:
    """Write a complete, randomly initialised checkpoint (model and tokenizer) into `folder`."""
    model, tokenizer = tiny_causal_lm(architecture, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_tiny_llama(folder: Path) -> None:
    build_tiny_causal_lm(folder, "llama")


def build_tiny_qwen2(folder: Path) -> None:
    build_tiny_causal_lm(folder, "qwen2")
