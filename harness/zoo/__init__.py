"""Assets the harness builds itself, offline: the embedded default model, its CLIP, and the built-in images."""

from harness.builtin_images import VERSION as BUILTIN_IMAGES_VERSION
from harness.builtin_images import write_builtin_images
from harness.registry import EmbeddedAsset
from harness.zoo.store import ensure_built
from harness.zoo.tiny_clip import build_tiny_clip
from harness.zoo.tiny_llava import build_tiny_llava

TINY_LLAVA = EmbeddedAsset(name="tiny-llava", version="1", build=build_tiny_llava)
TINY_CLIP = EmbeddedAsset(name="tiny-clip", version="1", build=build_tiny_clip)
BUILTIN_IMAGES = EmbeddedAsset(name="builtin-images", version=BUILTIN_IMAGES_VERSION, build=write_builtin_images)

__all__ = ["BUILTIN_IMAGES", "TINY_CLIP", "TINY_LLAVA", "build_tiny_clip", "build_tiny_llava", "ensure_built"]
