"""smol-llava: a LLaVA whose language model is the real pretrained SmolLM2-135M-Instruct, frozen, with a vision
tower and projector trained here on the synthetic world (LLaVA's stage 1: the projector learns, the language model
does not).

Like LLaVA's own stage-1 releases (a projector to combine with a base LLM), only the trained parts are committed,
in `smol_llava/`: the vision tower and projector weights, the LLaVA config and the processor settings. The full
checkpoint is assembled once, in the harness cache, from those parts and the language model exactly as
`smollm2-135m` loads it, then saved with `save_pretrained` and loaded like any LLaVA checkpoint.

SmolLM2's vocabulary has no free slot for LLaVA's `<image>` placeholder, and adding one would change the
language model's embedding matrix. The placeholder therefore takes the id of a reserved SmolLM2 special token
that chat text never contains (`<empty_output>`). Its embedding row is looked up but then overwritten: LLaVA
puts the projected image features at every placeholder position.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from harness.core.errors import ModelUnavailableError

PARTS_FOLDER = Path(__file__).parent / "smol_llava"  # written by `python -m training.smol_llava_training`
# smol-llava-qa's, written by `python -m training.smol_llava_qa_training`
QA_PARTS_FOLDER = Path(__file__).parent / "smol_llava_qa"
PARTS_WEIGHTS = "vision_and_projector.safetensors"
PARTS_FILES = ("config.json", "processor_config.json", PARTS_WEIGHTS)
LANGUAGE_MODEL = "smollm2-135m"  # the registered model whose checkpoint is the language model
IMAGE_TOKEN = "<image>"
RESERVED_TOKEN = "<empty_output>"  # SmolLM2's reserved special token whose id the image placeholder takes
PROMPT_TEMPLATE = "<|im_start|>user\n<image>\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
INSTRUCTION = "Describe the image."
TRAINED_MODULES = ("vision_tower", "multi_modal_projector")  # everything in the parts file, by submodule


def parts_digest(folder: Path = PARTS_FOLDER) -> str:
    """sha256 over the committed parts: the assembled checkpoint's cache folder is keyed by it (an absent file
    hashes as absent; building then says how to write the parts)."""
    digest = hashlib.sha256()
    for name in PARTS_FILES:
        path = folder / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(absent)"))
    return digest.hexdigest()


def image_tokenizer(language_folder: Path):
    """SmolLM2's tokenizer with `<image>` on the id of its reserved `<empty_output>`; nothing else differs."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(language_folder, trust_remote_code=False)
    token_id = tokenizer.convert_tokens_to_ids(RESERVED_TOKEN)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    for added in state["added_tokens"]:
        if added["content"] == RESERVED_TOKEN:
            added["content"] = IMAGE_TOKEN
    vocab = state["model"]["vocab"]
    vocab[IMAGE_TOKEN] = vocab.pop(RESERVED_TOKEN)
    renamed = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        padding_side="left",
    )
    renamed.chat_template = tokenizer.chat_template
    if renamed.convert_tokens_to_ids(IMAGE_TOKEN) != token_id or renamed.encode(IMAGE_TOKEN) != [token_id]:
        raise RuntimeError(f"{IMAGE_TOKEN} did not take the id {token_id} of {RESERVED_TOKEN} as one token")
    return renamed


def build_processor(tokenizer, processor_settings: dict):
    """LLaVA's own processor over a PIL CLIP image processor, as for every LLaVA checkpoint."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(**processor_settings["image_processor"])
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=processor_settings["patch_size"],
        vision_feature_select_strategy=processor_settings["vision_feature_select_strategy"],
        num_additional_image_tokens=processor_settings["num_additional_image_tokens"],
    )


def llava_config(language_config, vision_config: dict, *, image_token_id: int, projector: dict):
    """A LLaVA-1.5-style config around `language_config` (a loaded LlamaConfig, kept as it is)."""
    from transformers import CLIPVisionConfig, LlavaConfig

    return LlavaConfig(
        text_config=language_config.to_dict(),
        vision_config=CLIPVisionConfig(**vision_config).to_dict(),
        image_token_id=image_token_id,
        vision_feature_layer=projector["vision_feature_layer"],
        vision_feature_select_strategy=projector["vision_feature_select_strategy"],
        projector_hidden_act=projector["hidden_act"],
        multimodal_projector_bias=True,
        image_seq_length=projector["image_seq_length"],
        tie_word_embeddings=language_config.tie_word_embeddings,
    )


def language_state(language_folder: Path) -> dict[str, torch.Tensor]:
    """The language model's tensors as `smollm2-135m` saves them, keyed as inside LlamaModel."""
    from safetensors.torch import load_file

    state = load_file(str(language_folder / "model.safetensors"))
    return {name.removeprefix("model."): tensor for name, tensor in state.items() if name.startswith("model.")}


def assemble(language_folder: Path, parts: dict[str, torch.Tensor] | None, config, *, seed: int = 0):
    """The LLaVA model: SmolLM2's tensors loaded strictly into its language model, the parts (or, for training,
    a seeded initialisation when `parts` is None) into the vision tower and projector."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language_state(language_folder), strict=True)
    if parts is not None:
        for module in TRAINED_MODULES:
            prefix = module + "."
            getattr(model.model, module).load_state_dict(
                {name.removeprefix(prefix): t for name, t in parts.items() if name.startswith(prefix)}, strict=True
            )
        unknown = [name for name in parts if not name.startswith(tuple(m + "." for m in TRAINED_MODULES))]
        if unknown:
            raise RuntimeError(f"the parts file holds tensors outside {TRAINED_MODULES}: {unknown[:3]}")
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("the assembled LLaVA's lm_head is not tied to SmolLM2's embeddings")
    return model.eval()


def load_parts(folder: Path, language_folder: Path):
    """(parts tensors, LLaVA config, processor settings) of a parts folder, around the language model's config."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, LlavaConfig

    stored = json.loads((folder / "config.json").read_text())
    stored["text_config"] = AutoConfig.from_pretrained(language_folder, trust_remote_code=False).to_dict()
    config = LlavaConfig(**{k: v for k, v in stored.items() if k not in ("model_type", "transformers_version")})
    settings = json.loads((folder / "processor_config.json").read_text())
    return load_file(str(folder / PARTS_WEIGHTS)), config, settings


def build_smol_llava(
    staging: Path,
    language_folder: Path,
    parts_folder: Path = PARTS_FOLDER,
    *,
    name: str = "smol-llava",
    training: str = "training.smol_llava_training",
) -> None:
    """Assemble the checkpoint `name` into `staging` (the harness cache's build step) from the parts that the
    module `training` writes into `parts_folder`."""
    from harness.core import progress

    missing = [file for file in PARTS_FILES if not (parts_folder / file).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"{name}: the trained parts {', '.join(missing)} are missing from {parts_folder}; write them with "
            f"`python -m {training}` (in a checkout of the repository)"
        )
    progress.announce(f"{name}: assembling the checkpoint from SmolLM2-135M and the committed parts (once)")
    parts, config, settings = load_parts(parts_folder, language_folder)
    model = assemble(language_folder, parts, config)
    processor = build_processor(image_tokenizer(language_folder), settings)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    card = parts_folder / "MODEL_CARD.md"
    if card.is_file():
        (staging / "MODEL_CARD.md").write_text(card.read_text())
