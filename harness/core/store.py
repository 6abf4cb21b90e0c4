"""Build a cached folder once per cache, safely when several xdist workers ask at once: embedded assets, and
checkpoints converted from GGUF files.

A built folder is usable by everyone the umask lets in, whatever its builder did (safetensors ≥ 0.8 writes
0600 files). Its `.complete` marker lists every file with its size, and "is it built?" compares them (one stat per
file): a truncated or missing file is named in a warning and the folder is rebuilt. A build killed outright
(SIGKILL, a power cut) leaves its staging folder `.{name}-…` beside the target; the next build of that target
removes it.
"""

from __future__ import annotations

import glob
import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.core import atomic_files
from harness.core.errors import CacheError

COMPLETE_MARKER = ".complete"  # in a folder build_once made, written last
_MARKER_FORMAT = 2  # 1: a line with the folder's name (harness versions before sizes were recorded)


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


@dataclass(frozen=True)
class _State:
    """What "is it built?" found: built (verified, or with an old marker that records no sizes), or not, and
    then `damage` says why a folder that was built is no longer whole (None: it was never completed)."""

    built: bool
    damage: str | None = None


def _inspect(target: Path) -> _State:
    """Compare the files of `target` with the sizes its marker recorded (one stat per file).

    A folder with an old marker (one line, its name) counts as built, unverified, rather than being rebuilt once:
    rebuilding costs a GGUF conversion (30 s – 2 min a model) on every machine, and is impossible in a lab's
    read-only shared cache, which would then stop working; a truncated weight file there still fails its load
    with an error naming the folder and what to do (harness.models.loading)."""
    marker = target / COMPLETE_MARKER
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return _State(built=False)
    if not text.lstrip().startswith("{"):
        return _State(built=True)  # an old marker: built by an earlier version, sizes unknown
    try:
        files = json.loads(text)["files"]
        if not isinstance(files, dict):
            raise TypeError(f"'files' is a {type(files).__name__}, not an object")
    except (ValueError, KeyError, TypeError) as error:
        return _State(built=False, damage=f"its {COMPLETE_MARKER} marker is unreadable ({error!r})")
    for name, size in files.items():
        try:
            found = (target / name).stat().st_size
        except FileNotFoundError:
            return _State(built=False, damage=f"{name} is missing")
        if found != size:
            return _State(built=False, damage=f"{name} is {found} bytes, {size} were built")
    return _State(built=True)


def _record(staging: Path, target: Path) -> str:
    """The marker of a finished build of `target` in `staging`: every file's path (relative, '/'-separated) and
    size, in name order."""
    files = {
        path.relative_to(staging).as_posix(): path.stat().st_size
        for path in sorted(staging.rglob("*"))
        if path.is_file() and path != staging / COMPLETE_MARKER
    }
    return json.dumps({"format": _MARKER_FORMAT, "folder": target.name, "files": files}, indent=1) + "\n"


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, written by `build(staging folder)` and renamed into place unless it is already built; a folder
    left by a build that died, or whose files no longer have the sizes they were built with (a warning names the
    file), is rebuilt. Every file and folder of the build gets the mode the umask allows."""
    state = _inspect(target)
    if state.built:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target) + ".lock")
        lock.acquire()
    except OSError as error:
        problem = "is not built" if state.damage is None else f"is damaged ({state.damage})"
        raise CacheError(
            f"{target.name} {problem} in the cache {target.parent} and cannot be built there ({error}); pass "
            "--can-cache-dir (or set CAN_HARNESS_CACHE) to a writable folder, or build it once where the cache "
            "is writable (`python -m harness.runner.prepare`)"
        ) from error
    try:
        state = _inspect(target)
        if state.built:
            return target  # another worker built it while we waited
        if state.damage is not None:
            warnings.warn(f"the cached folder {target} is damaged: {state.damage}; rebuilding it", stacklevel=2)
        _remove_leftovers(target)
        if target.exists():
            shutil.rmtree(target)  # left by a build that died before it completed, or damaged since
        with atomic_files.staging_folder(target) as staging:
            build(staging)
            atomic_files.follow_umask(staging)
            (staging / COMPLETE_MARKER).write_text(_record(staging, target))  # last: its presence means "complete"
            staging.rename(target)
    finally:
        lock.release()
    return target


def _remove_leftovers(target: Path) -> None:
    """Remove what killed builds of `target` left beside it: every `.{target.name}-*` entry (staging and scratch
    folders). Called under the target's lock, so no build of it is running. An entry that also starts with a
    longer target name whose lock file is there (`.{name}-on-{variant}-…` of `{name}-on-{variant}`) belongs to
    that target, which may be building now: it is left alone."""
    prefix = f".{target.name}-"
    longer = [
        "." + lock.name.removesuffix(".lock") + "-"
        for lock in target.parent.glob(f"{glob.escape(target.name)}-*.lock")  # the lock files of longer names
    ]
    for entry in target.parent.glob(f"{glob.escape(prefix)}*"):
        if any(entry.name.startswith(other) for other in longer):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
