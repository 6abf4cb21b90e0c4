"""The run's data, read and validated once per process: the images (every category under the image root: the
others set each category's chance level) and the texts. Probes take what they read from here
(harness.runner.probe); the pytest plugin scans it at collection, before any model loads."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from harness.core.errors import UnknownNameError
from harness.core.store import ensure_built
from harness.data.images import ImageSet, scan_image_root
from harness.data.texts import TextSet, load_text_set
from harness.runner.settings import HarnessSettings
from harness.zoo import WORLD_IMAGES

DATA = ("images", "texts")


class DataSources:
    """The images and texts of a run (each read on first use), and the categories its cases run on."""

    def __init__(self, settings: HarnessSettings, images: ImageSet | None = None, texts: TextSet | None = None):
        self.settings = settings
        if images is not None:
            self.images = images
        if texts is not None:
            self.texts = texts

    @cached_property
    def images(self) -> ImageSet:
        """Every category under the configured root (held-out renderings of the synthetic world by default), the
        selection checked by name."""
        return load_image_set(self.settings)

    @cached_property
    def texts(self) -> TextSet:
        """The texts text-only models are measured on."""
        return load_text_set(self.settings.texts)

    def data_set(self, data: str) -> ImageSet | TextSet:
        if data not in DATA:
            raise UnknownNameError("kind of data", data, DATA)
        return getattr(self, data)

    def categories(self, data: str) -> list[str]:
        """The categories cases run on: the selected image categories (`--can-categories`, else all), or every
        text."""
        found = self.data_set(data)
        if data == "images" and self.settings.categories:
            return list(self.settings.categories)
        return list(found.categories)


def load_image_set(settings: HarnessSettings) -> ImageSet:
    """All categories under the configured root (held-out renderings of the synthetic world by default), the
    selection checked by name."""
    root = settings.image_root or ensure_built(WORLD_IMAGES, settings.cache_dir)
    images = scan_image_root(
        Path(root),
        max_per_category=settings.max_images,
        max_pixels=settings.max_image_pixels,
        max_aspect=settings.max_image_aspect,
    )
    for category in settings.categories or ():
        images.check_category(category)
    return images
