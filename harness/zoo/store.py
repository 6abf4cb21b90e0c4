"""Build an embedded asset once per cache folder, safely when several xdist workers ask at once."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from harness.registry import EmbeddedAsset

_COMPLETE = ".complete"


def ensure_built(asset: EmbeddedAsset, cache_dir: Path) -> Path:
    """Folder holding `asset`, building it under a file lock if absent; partial builds never show."""
    zoo = Path(cache_dir) / "zoo"
    target = zoo / f"{asset.name}-v{asset.version}"
    if (target / _COMPLETE).exists():
        return target
    zoo.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _COMPLETE).exists():
            return target  # another worker built it while we waited
        if target.exists():
            shutil.rmtree(target)  # left by a build that died before it completed
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=zoo))
        try:
            asset.build(staging)
            (staging / _COMPLETE).write_text(f"{asset.name} v{asset.version}\n")
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return target
