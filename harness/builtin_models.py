"""The models the harness knows by name out of the box."""

from harness.registry import ClipSpec, ModelSpec, register_model
from harness.zoo import TINY_CLIP, TINY_LLAVA

register_model(
    ModelSpec(
        name="tiny-llava",
        source="(built offline by the harness)",
        embedded=TINY_LLAVA,
        clip=ClipSpec(model_name="tiny-clip", pretrained=None, embedded=TINY_CLIP),
        description="Randomly initialised tiny LLaVA (CLIP tower + Llama LM) built offline: exercises every code "
        "path of a real checkpoint, but its captions carry no meaning.",
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
        family="instructblip",
        model_class="InstructBlipForConditionalGeneration",
        prompt_template="{instruction}",
        instruction="A short image description:",
        description="InstructBLIP-Vicuna-7b, the CAN paper's second model.",
    )
)
