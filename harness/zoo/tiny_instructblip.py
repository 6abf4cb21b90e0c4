"""A tiny InstructBLIP (ViT + Q-Former + Llama) with word-level tokenizers, built offline.

Same classes and processor type as `Salesforce/instructblip-vicuna-7b` at widths of tens, so the tests exercise
every code path of the real checkpoint in milliseconds: the query placeholders the processor puts in front of the
prompt, the Q-Former's own tokenizer, generation and teacher-forced scoring. Three initialisation details matter:
the vision tower's default `initializer_range` is 1e-10 (its weights would be ~0 and masking it would do nothing),
`query_tokens` start at zero (all queries identical), and the config's image token must be set (default None).
Its captions carry no meaning.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from harness.zoo.tiny_llava import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    build_word_tokenizer,
    generating_with,
    tiny_decoder_config,
    tiny_vocabulary,
)

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_qformer_tokenizer(words: list[str]):
    """A BERT-like word-level tokenizer for the Q-Former's copy of the instruction: `[CLS] text [SEP]`."""
    from transformers import PreTrainedTokenizerFast

    vocabulary: dict[str, int] = {}
    for word in (*BERT_SPECIALS, *(w.lower() for w in words if w not in (*SPECIAL_TOKENS, IMAGE_TOKEN))):
        vocabulary.setdefault(word, len(vocabulary))
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_instructblip(
    *,
    seed: int = 0,
    text_hidden: int = 64,
    text_intermediate: int = 128,
    text_layers: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    qformer_hidden: int = 32,
    qformer_intermediate: int = 48,
    qformer_layers: int = 2,
    num_query_tokens: int = 4,
    image_size: int = 32,
    patch_size: int = 8,
    initializer_range: float = 0.2,
):
    """A fresh (model, processor) pair: a real InstructBlipForConditionalGeneration with a PIL processor."""
    from transformers import (
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokenizer = build_word_tokenizer(tiny_vocabulary())  # must not carry an `image_token` attribute
    qformer_tokenizer = build_qformer_tokenizer(tiny_vocabulary())
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=num_query_tokens,
    )
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=initializer_range,
        ).to_dict(),
        qformer_config=InstructBlipQFormerConfig(
            hidden_size=qformer_hidden,
            intermediate_size=qformer_intermediate,
            num_hidden_layers=qformer_layers,
            num_attention_heads=2,
            cross_attention_frequency=1,
            encoder_hidden_size=vision_hidden,
            vocab_size=len(qformer_tokenizer),
            pad_token_id=qformer_tokenizer.pad_token_id,
            max_position_embeddings=64,
            initializer_range=initializer_range,
        ).to_dict(),
        text_config=tiny_decoder_config(
            tokenizer,
            hidden=text_hidden,
            intermediate=text_intermediate,
            layers=text_layers,
            heads=4,
            kv_heads=4,
            initializer_range=initializer_range,
        ).to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, initializer_range)
    return generating_with(model, tokenizer), processor


def build_tiny_instructblip(folder: Path, *, seed: int = 0, **sizes) -> None:
    """Write a complete, randomly initialised InstructBLIP checkpoint (model, tokenizers, processor)."""
    model, processor = tiny_instructblip(seed=seed, **sizes)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
