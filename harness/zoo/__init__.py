"""Assets of the harness: the trained synthetic-world models it ships, the tiny random models its tests build,
the default image set, and the catalogue of the built-in models (catalogue.py). The scripts that trained the
shipped models live outside the package, in the repository's training/ folder."""

import functools
from pathlib import Path

from harness.core.store import EmbeddedAsset
from harness.data import world
from harness.zoo import smol_llava
from harness.zoo.tiny_causal_lm import build_tiny_llama, build_tiny_qwen2
from harness.zoo.tiny_clip import build_tiny_clip
from harness.zoo.tiny_instructblip import build_tiny_instructblip
from harness.zoo.tiny_llava import build_tiny_llava, build_tiny_llava_next

SYNTH_FOLDER = Path(__file__).parent / "synth"  # written by `python -m training.synth_training`
TINY_LLAVA = EmbeddedAsset(name="tiny-llava", version="2", build=build_tiny_llava)
TINY_CLIP = EmbeddedAsset(name="tiny-clip", version="1", build=build_tiny_clip)
TINY_LLAVA_NEXT = EmbeddedAsset(name="tiny-llava-next", version="1", build=build_tiny_llava_next)
TINY_INSTRUCTBLIP = EmbeddedAsset(name="tiny-instructblip", version="1", build=build_tiny_instructblip)
TINY_LLAMA = EmbeddedAsset(name="tiny-llama", version="1", build=build_tiny_llama)
TINY_QWEN2 = EmbeddedAsset(name="tiny-qwen2", version="1", build=build_tiny_qwen2)
# assembled at first use from the registered language model and the committed trained parts (keyed by their hash)
SMOL_LLAVA = EmbeddedAsset(
    name="smol-llava",
    version=f"1-{smol_llava.parts_digest()[:12]}",
    build=smol_llava.build_smol_llava,
    base_model=smol_llava.LANGUAGE_MODEL,
)
# smol-llava with its projector fine-tuned to answer questions too (training/smol_llava_qa_training.py)
SMOL_LLAVA_QA = EmbeddedAsset(
    name="smol-llava-qa",
    version=f"1-{smol_llava.parts_digest(smol_llava.QA_PARTS_FOLDER)[:12]}",
    build=functools.partial(
        smol_llava.build_smol_llava,
        parts_folder=smol_llava.QA_PARTS_FOLDER,
        name="smol-llava-qa",
        training="training.smol_llava_qa_training",
    ),
    base_model=smol_llava.LANGUAGE_MODEL,
)
WORLD_IMAGES = EmbeddedAsset(name="world-images", version=world.VERSION, build=world.write_category_folders)

__all__ = [
    "SMOL_LLAVA",
    "SMOL_LLAVA_QA",
    "SYNTH_FOLDER",
    "TINY_CLIP",
    "TINY_INSTRUCTBLIP",
    "TINY_LLAMA",
    "TINY_LLAVA",
    "TINY_LLAVA_NEXT",
    "TINY_QWEN2",
    "WORLD_IMAGES",
    "build_tiny_clip",
    "build_tiny_instructblip",
    "build_tiny_llama",
    "build_tiny_llava",
    "build_tiny_llava_next",
    "build_tiny_qwen2",
]
