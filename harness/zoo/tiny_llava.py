"""A tiny LLaVA (CLIP vision tower + Llama language model) with a word-level tokenizer, built offline.

It has the exact module structure of `llava-hf/llava-1.5-7b-hf` (same classes, same processor type and prompt
format) at widths of tens instead of thousands, so every code path a real checkpoint takes is exercised in
milliseconds. `build_tiny_llava` writes a random one for the tests: its language model is initialised with std
0.2 (HF's default 0.02 gives a near-uniform next-token distribution whatever is masked), so that masking visibly
moves its outputs; its captions and thresholds mean nothing. `training/synth_training.py` (outside the package)
trains the same architecture, a little wider, into the shipped synth-llava.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from harness.data.world import WORLD_WORDS
from harness.models.registry import CAPTION_INSTRUCTION

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
IMAGE_TOKEN = "<image>"
PROMPT_WORDS = ("USER", "ASSISTANT", ":", ".", ",", "-", "a", "an", "the", "of", "is", "in", "on", "with", "and")


def tiny_vocabulary() -> list[str]:
    """Special tokens first (ids 0-3), then every word the prompt and the synthetic world's captions use."""
    words = [*SPECIAL_TOKENS]
    instruction_words = CAPTION_INSTRUCTION.replace(".", " .").replace("-", " - ").split()
    for word in (*PROMPT_WORDS, *instruction_words, *WORLD_WORDS):
        if word not in words:
            words.append(word)
    return words


def build_word_tokenizer(words: list[str], *, bos: bool = True, image_token: bool = True):
    """A fast tokenizer that splits on whitespace/punctuation; with `bos` it adds `<s>` like Llama's (without, it
    has no BOS, like Qwen2's), with `image_token` it knows `<image>`."""
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if image_token:
        backend.add_special_tokens([IMAGE_TOKEN])
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", words.index("<s>"))]
        )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no space before punctuation
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_decoder_config(
    tokenizer,
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    initializer_range: float,
    config_class=None,
    **extra,
):
    """A small decoder config (LlamaConfig unless another class is given) whose vocabulary and special tokens are
    the tokenizer's: the language model of every tiny model."""
    from transformers import LlamaConfig

    return (config_class or LlamaConfig)(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **{"max_position_embeddings": 512, **extra},
    )


def generating_with(model, tokenizer):
    """`model` with the tokenizer's pad and EOS ids in its generation config (saved with it)."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_llava(*, seed: int = 0, **sizes):
    """A fresh (model, processor) pair: a real LlavaForConditionalGeneration with a PIL LlavaProcessor, or with
    `any_resolution` a LlavaNextForConditionalGeneration (LLaVA-1.6) whose processor cuts each image into tiles
    on a grid of 1×1, 1×2 and 2×1 tiles plus a downscaled overview. `sizes`: those of `llava_parts`."""
    import transformers

    config, processor = llava_parts(**sizes)
    torch.manual_seed(seed)
    prefix = "LlavaNext" if sizes.get("any_resolution") else "Llava"
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    return generating_with(model, processor.tokenizer), processor


def llava_parts(
    *,
    text_hidden: int = 64,
    text_intermediate: int = 128,
    text_layers: int = 2,
    text_heads: int = 4,
    vision_hidden: int = 32,
    vision_intermediate: int | None = None,
    vision_layers: int = 2,
    vision_heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    vocabulary_size: int | None = None,
    max_positions: int = 512,
    initializer_range: float = 0.2,
    any_resolution: bool = False,
):
    """(config, processor) of a LLaVA of these sizes, the word tokenizer padded with filler words to
    `vocabulary_size` (a full-size vocabulary costs what a real one does in lm_head)."""
    import transformers
    from transformers import CLIPVisionConfig

    words = tiny_vocabulary()
    words += [f"w{index}" for index in range(max(0, (vocabulary_size or 0) - len(words) - 1))]  # + <image>
    tokenizer = build_word_tokenizer(words)
    processor = llava_processor(tokenizer, image_size, patch_size, any_resolution=any_resolution)
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_intermediate or 2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = tiny_decoder_config(
        tokenizer,
        hidden=text_hidden,
        intermediate=text_intermediate,
        layers=text_layers,
        heads=text_heads,
        kv_heads=text_heads,
        initializer_range=initializer_range,
        max_position_embeddings=max_positions,
    )
    shared = {
        "vision_config": vision,
        "text_config": text,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
    }
    if any_resolution:
        return transformers.LlavaNextConfig(**shared, image_grid_pinpoints=tile_grid(image_size)), processor
    return transformers.LlavaConfig(**shared, image_seq_length=(image_size // patch_size) ** 2), processor


def tile_grid(image_size: int) -> list[list[int]]:
    """LLaVA-NeXT's tile layouts of the tiny models: 1×1, 1×2 and 2×1 tiles."""
    return [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]


def llava_processor(tokenizer, image_size: int, patch_size: int, *, any_resolution: bool = False):
    """A PIL LlavaProcessor (or LlavaNextProcessor, any-resolution tiles) around `tokenizer`, with CLIP's
    preprocessing at `image_size` and LLaVA's prompt handling (CLS dropped by the "default" strategy)."""
    import transformers

    crop = {"height": image_size, "width": image_size}
    if any_resolution:
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size=crop, image_grid_pinpoints=tile_grid(image_size)
        )
    else:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=crop)
    prefix = "LlavaNext" if any_resolution else "Llava"
    return getattr(transformers, f"{prefix}Processor")(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP tower's CLS token, dropped by the "default" strategy
    )


def build_tiny_llava(folder: Path, *, seed: int = 0, **sizes) -> None:
    """Write a complete, randomly initialised LLaVA checkpoint (model, tokenizer, processor) into `folder`."""
    model, processor = tiny_llava(seed=seed, **sizes)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_tiny_llava_next(folder: Path, *, seed: int = 0) -> None:
    """The same for LLaVA-NeXT (any-resolution tiles)."""
    build_tiny_llava(folder, seed=seed, any_resolution=True)
