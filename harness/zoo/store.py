"""Build a cached folder once per cache, safely when several xdist workers ask at once: embedded assets, and
checkpoints converted from GGUF files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.core import atomic_files
from harness.core.errors import CacheError

_COMPLETE = ".complete"


@dataclass(frozen=True)
class EmbeddedAsset:
    """A checkpoint or data set the harness builds itself, offline, into its cache (tiny models, images)."""

    name: str
    version: str
    build: Callable[..., object]  # writes the complete asset into the given (empty) folder
    base_model: str | None = None  # a registered model whose checkpoint folder `build` gets as second argument


def ensure_built(asset: EmbeddedAsset, cache_dir: Path, *inputs: Path, variant: str | None = None) -> Path:
    """Folder holding `asset`, building it under a file lock if absent (`asset.build(staging, *inputs)`);
    partial builds never show. `variant` (e.g. the digest of the base checkpoint it is assembled on) keys a
    build that depends on its inputs: one folder per variant."""
    name = f"{asset.name}-v{asset.version}" + ("" if variant is None else f"-on-{variant[:12]}")
    return build_once(Path(cache_dir) / "zoo" / name, lambda staging: asset.build(staging, *inputs))


def _is_built(target: Path) -> bool:
    return (target / _COMPLETE).exists()


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, written by `build(staging folder)` and renamed into place unless it is already complete; a
    folder left by a build that died is rebuilt."""
    if _is_built(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target) + ".lock")
        lock.acquire()
    except OSError as error:
        raise CacheError(
            f"{target.name} is not built in the cache {target.parent} and cannot be built there ({error}); pass "
            "--can-cache-dir (or set CAN_HARNESS_CACHE) to a writable folder, or build it once where the cache "
            "is writable (`python -m harness.runner.prepare`)"
        ) from error
    try:
        if _is_built(target):
            return target  # another worker built it while we waited
        if target.exists():
            shutil.rmtree(target)  # left by a build that died before it completed
        with atomic_files.staging_folder(target) as staging:
            build(staging)
            (staging / _COMPLETE).write_text(f"{target.name}\n")
            staging.rename(target)
    finally:
        lock.release()
    return target
