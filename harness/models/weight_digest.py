"""Exact identity of a checkpoint folder: the sha256 of every byte of its weight and config files.

A regression harness must tell an updated checkpoint from the old one, whichever byte changed, so nothing is
sampled, and no file is identified by its name: a Hugging Face cache snapshot's symlinks are followed and their
`blobs/<sha>` targets hashed like any other file (a blob edited in place keeps its name, not its bytes).

Hashing is paid once per file: the digest is remembered in the harness cache (`digests/`), keyed by the file's
(resolved path, size, mtime_ns, ctime_ns, inode), so a later run re-reads a file only when one of those changed.
The ctime catches a file rewritten in place whose mtime was set back (`os.utime` cannot set the ctime). A file
whose mtime or ctime is under two seconds old is hashed but not remembered: a second write within the
filesystem's timestamp granularity could keep both (git's "racy clean" rule). Each memo carries the sha256 of its
own body; a memo that fails it (edited or damaged) is ignored with a warning and the file hashed again. The
checksum detects an edited or damaged memo, not a forger who recomputes it: the cache is trusted as much as the
checkpoint folder itself.
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
# in each memo's file name: memos of an earlier layout (no ctime, no checksum) are never read, so they neither
# count nor warn
MEMO_FORMAT = 2
# a file written this recently is not remembered: a second write within the filesystem's timestamp granularity
# could keep its mtime and ctime (git's "racy clean" rule)
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
    """The sha256 of every byte of `file` (a symlink's target): remembered in `cache_dir` while the target's
    (resolved path, size, mtime_ns, ctime_ns, inode) still match, else streamed (then remembered unless the file
    is under two seconds old). `cache_dir` None: always streamed, nothing remembered."""
    target = Path(file).resolve()
    stat = target.stat()
    identity = {
        "path": str(target),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
    }
    memo = None if cache_dir is None else _memo_path(Path(cache_dir), target)
    remembered = _read_memo(memo, target)
    if remembered is not None and remembered["identity"] == identity:
        if task is not None:
            task.step(steps=stat.st_size >> 20)
        return remembered["sha256"]
    content = stream_sha256(target, task)
    if memo is not None and time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_NS:
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


def _memo_checksum(body: dict) -> str:
    """sha256 of a memo body's canonical JSON (sorted keys, no spaces): what the memo's `checksum` must be."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _memo_path(cache_dir: Path, target: Path) -> Path:
    """One memo per resolved path, its layout's format in the name."""
    key = hashlib.sha256(str(target).encode()).hexdigest()[:32]
    return cache_dir / MEMO_FOLDER / f"{key}.v{MEMO_FORMAT}.json"


def _read_memo(memo: Path | None, target: Path) -> dict | None:
    """The memo's body ({"identity": ..., "sha256": ...}) if it exists and passes its checksum; a memo that
    cannot be read or fails the check is ignored with a warning naming it (it costs a re-hash, and the memo is
    rewritten)."""
    if memo is None or not memo.is_file():
        return None
    try:
        record = json.loads(memo.read_text())
    except (OSError, ValueError) as error:
        _distrust(memo, target, f"cannot be read as JSON ({error})")
        return None
    if not isinstance(record, dict) or set(record) != {"identity", "sha256", "checksum"}:
        _distrust(memo, target, "does not hold exactly the keys identity, sha256 and checksum")
        return None
    body = {"identity": record["identity"], "sha256": record["sha256"]}
    if record["checksum"] != _memo_checksum(body):
        _distrust(memo, target, "fails its checksum: it was edited or damaged after it was written")
        return None
    return body


def _distrust(memo: Path, target: Path, reason: str) -> None:
    """Warn that `memo` is not believed, and why (stacklevel: the caller of folder_digest or file_sha256)."""
    warnings.warn(
        f"the weight-digest memo {memo} {reason}; it is ignored: {target} is hashed again and the memo "
        "rewritten (if this recurs, something else writes into the harness cache's digests/ folder)",
        stacklevel=4,
    )


def _write_memo(memo: Path, body: dict) -> None:
    """Atomically (a reader never sees half a memo); a cache that cannot be written costs a re-hash next time."""
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.write_text(memo, json.dumps({**body, "checksum": _memo_checksum(body)}))
    except OSError as error:
        warnings.warn(
            f"cannot remember the weight digest in {memo.parent} ({error}); the file will be hashed again "
            "next run",
            stacklevel=3,
        )
