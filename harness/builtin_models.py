"""The models the harness knows by name out of the box."""

from harness.registry import ClipSpec, ModelSpec, register_model
from harness.zoo import SYNTH_FOLDER, TINY_CLIP, TINY_INSTRUCTBLIP, TINY_LLAVA, TINY_LLAVA_NEXT

SYNTH_CLIP = ClipSpec(model_name=f"local-dir:{SYNTH_FOLDER / 'synth-clip'}", pretrained=None)

register_model(
    ModelSpec(
        name="synth-llava",
        source=str(SYNTH_FOLDER / "synth-llava"),
        clip=SYNTH_CLIP,
        description="The embedded default: a small LLaVA (CLIP tower + Llama LM) trained on the synthetic world "
        "(harness/world.py), scored by an open_clip model trained on the same world; see "
        "harness/zoo/synth/MODEL_CARD.md.",
    )
)
register_model(
    ModelSpec(
        name="planted-llava",
        source=str(SYNTH_FOLDER / "planted-llava"),
        clip=SYNTH_CLIP,
        description="synth-llava with one critical down_proj channel planted by construction (a massive "
        "activation every later RMSNorm relies on): the ground truth the harness must find.",
    )
)
register_model(
    ModelSpec(
        name="tiny-llava",
        source="(built offline by the harness)",
        embedded=TINY_LLAVA,
        clip=ClipSpec(model_name="tiny-clip", pretrained=None, embedded=TINY_CLIP),
        description="Randomly initialised tiny LLaVA built offline in milliseconds, for testing the harness: "
        "it exercises every code path of a real checkpoint, but its captions carry no meaning.",
    )
)
LLAVA_NEXT = {"family": "llava_next", "model_class": "LlavaNextForConditionalGeneration"}
register_model(
    ModelSpec(
        name="tiny-llava-next",
        source="(built offline by the harness)",
        embedded=TINY_LLAVA_NEXT,
        clip=ClipSpec(model_name="tiny-clip", pretrained=None, embedded=TINY_CLIP),
        **LLAVA_NEXT,
        description="Randomly initialised tiny LLaVA-NeXT (any-resolution tiles) built offline, for testing the "
        "harness's LLaVA-NeXT path; its captions carry no meaning.",
    )
)
register_model(
    ModelSpec(
        name="llava-v1.6-vicuna-7b",
        source="llava-hf/llava-v1.6-vicuna-7b-hf",
        **LLAVA_NEXT,
        description="LLaVA-NeXT (1.6) with Vicuna-7b: LLaVA-1.5's language model behind any-resolution tiles.",
    )
)
INSTRUCTBLIP = {
    "family": "instructblip",
    "model_class": "InstructBlipForConditionalGeneration",
    "prompt_template": "{instruction}",  # the processor puts the query placeholders in front of the text
}
register_model(
    ModelSpec(
        name="tiny-instructblip",
        source="(built offline by the harness)",
        embedded=TINY_INSTRUCTBLIP,
        clip=ClipSpec(model_name="tiny-clip", pretrained=None, embedded=TINY_CLIP),
        **INSTRUCTBLIP,
        description="Randomly initialised tiny InstructBLIP (ViT, Q-Former, Llama) built offline, for testing the "
        "harness's InstructBLIP path; its captions carry no meaning.",
    )
)
register_model(
    ModelSpec(
        name="llava-1.5-7b",
        source="llava-hf/llava-1.5-7b-hf",
        description="LLaVA-1.5-7b (Vicuna-7B-v1.5 language model), the CAN paper's main model.",
    )
)
register_model(
    ModelSpec(
        name="instructblip-vicuna-7b",
        source="Salesforce/instructblip-vicuna-7b",
        **INSTRUCTBLIP,
        instruction="A short image description:",
        description="InstructBLIP-Vicuna-7b, the CAN paper's second model.",
    )
)
