"""Where the harness keeps what it builds and computes (checkpoints, embedded models, rankings): a core module,
so that scripts at any layer can name the default without importing the settings."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$CAN_HARNESS_CACHE, else ~/.cache/can-harness."""
    return Path(os.environ.get("CAN_HARNESS_CACHE", Path.home() / ".cache" / "can-harness"))
