"""Exact identity of a checkpoint folder: the sha256 of every byte of its weight and config files.

A regression harness must tell an updated checkpoint from the old one, whichever byte changed, so nothing is
sampled. Hashing is paid once per file: the digest is remembered in the harness cache, keyed by the file's
(resolved path, size, mtime_ns, inode), so a later run re-reads a file only when one of those changed (a file
written in the last two seconds is hashed but not remembered). Files in
the Hugging Face cache are symlinks to blobs already named by their content hash; that name is used as is.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

from harness.core import atomic_files, progress

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model")
CHUNK_BYTES = 1 << 22
MEMO_FOLDER = "digests"
# a file written this recently is not remembered: a second write within the filesystem's timestamp granularity
# could keep its mtime (git's "racy clean" rule)
RACY_NS = 2_000_000_000


def folder_digest(folder: Path, cache_dir: Path | None) -> str:
    """sha256 over (relative name, size, content digest) of each weight/config file, in name order; location
    and mtimes do not enter it. `cache_dir` holds the per-file memo (None: hash without remembering)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    total = sum(file.stat().st_size for file in files)
    digest = hashlib.sha256()
    with progress.task(f"hashing the weights of {folder}", total=max(total >> 20, 1)) as task:
        for file in files:
            content = file_digest(file, cache_dir, task)
            digest.update(f"{file.relative_to(folder)}:{file.stat().st_size}:{content}\n".encode())
    return digest.hexdigest()[:16]


def file_digest(file: Path, cache_dir: Path | None, task: progress.Task | None = None) -> str:
    """The content hash of one file: a Hugging Face blob's own name, a remembered digest whose (path, size,
    mtime_ns, inode) still match, or a fresh streamed sha256 (then remembered)."""
    target = file.resolve()
    if file.is_symlink() and target.parent.name == "blobs":
        return target.name
    stat = target.stat()
    identity = {"path": str(target), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo = None if cache_dir is None else _memo_path(Path(cache_dir), target)
    remembered = _read_memo(memo)
    if remembered is not None and remembered.get("identity") == identity:
        if task is not None:
            task.step(steps=stat.st_size >> 20)
        return remembered["sha256"]
    content = stream_sha256(target, task)
    if memo is not None and time.time_ns() - stat.st_mtime_ns > RACY_NS:
        _write_memo(memo, {"identity": identity, "sha256": content})
    return content


def stream_sha256(path: Path, task: progress.Task | None = None) -> str:
    """sha256 of every byte of `path`, read in 4 MiB chunks (progress in MiB)."""
    sha256 = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            sha256.update(chunk)
            if task is not None:
                task.step(steps=len(chunk) >> 20)
    return sha256.hexdigest()


def _memo_path(cache_dir: Path, target: Path) -> Path:
    return cache_dir / MEMO_FOLDER / f"{hashlib.sha256(str(target).encode()).hexdigest()[:32]}.json"


def _read_memo(memo: Path | None) -> dict | None:
    if memo is None or not memo.is_file():
        return None
    try:
        record = json.loads(memo.read_text())
    except (OSError, ValueError):
        return None  # an unreadable memo only costs a re-hash
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None


def _write_memo(memo: Path, record: dict) -> None:
    """Atomically (a reader never sees half a memo); a cache that cannot be written costs a re-hash next time."""
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.write_text(memo, json.dumps(record))
    except OSError as error:
        warnings.warn(
            f"cannot remember the weight digest in {memo.parent} ({error}); the file will be hashed again "
            "next run",
            stacklevel=3,
        )
