"""What the plugin keeps on the pytest config for one run: its settings and baselines (built at configure time),
its images and texts (read once per process, at collection or by the session, whichever comes first) and the
progress routing to put back when the run ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the plugin's import loads none of them (see harness.plugin.options)
    from harness.data.images import ImageSet
    from harness.data.texts import TextSet
    from harness.runner.baseline import Baselines
    from harness.runner.settings import HarnessSettings

SETTINGS: pytest.StashKey[HarnessSettings] = pytest.StashKey()
BASELINES: pytest.StashKey[Baselines] = pytest.StashKey()
IMAGES: pytest.StashKey[ImageSet] = pytest.StashKey()
TEXTS: pytest.StashKey[TextSet] = pytest.StashKey()
PROGRESS: pytest.StashKey[object] = pytest.StashKey()  # the progress routing before this run, put back after


def image_set(config: pytest.Config) -> ImageSet:
    """The run's images, scanned and validated once per process (collection and the session share it)."""
    if IMAGES not in config.stash:
        from harness.runner.session import load_image_set

        config.stash[IMAGES] = load_image_set(config.stash[SETTINGS])
    return config.stash[IMAGES]


def text_set(config: pytest.Config) -> TextSet:
    """The run's texts for text-only models, read and validated once per process."""
    if TEXTS not in config.stash:
        from harness.data.texts import load_text_set

        config.stash[TEXTS] = load_text_set(config.stash[SETTINGS].texts)
    return config.stash[TEXTS]
