"""What the plugin keeps on the pytest config for one run: its settings and baselines (built at configure time),
its images and texts (read once per process, at collection or by the session, whichever comes first) and the
progress routing to put back when the run ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the plugin's import loads none of them (see harness.plugin.options)
    from harness.runner.baseline import Baselines
    from harness.runner.data_sources import DataSources
    from harness.runner.settings import HarnessSettings

SETTINGS: pytest.StashKey[HarnessSettings] = pytest.StashKey()
BASELINES: pytest.StashKey[Baselines] = pytest.StashKey()
SOURCES: pytest.StashKey[DataSources] = pytest.StashKey()
PROGRESS: pytest.StashKey[object] = pytest.StashKey()  # the progress routing before this run, put back after


def data_sources(config: pytest.Config) -> DataSources:
    """The run's data (images, texts), each read and validated once per process (collection and the session share
    it)."""
    if SOURCES not in config.stash:
        from harness.runner.data_sources import DataSources

        config.stash[SOURCES] = DataSources(config.stash[SETTINGS])
    return config.stash[SOURCES]
