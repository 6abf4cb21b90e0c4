"""Files and folders that appear whole or not at all, with the permissions the user's umask asks for.

A temporary name in the destination's folder is written, then renamed onto the destination: a reader (another
xdist worker, a later run) sees the old file or the new one, never half of one, and an interrupted or failed
write leaves the old file as it was. `tempfile` creates its files 0600 and folders 0700 (and so does
safetensors ≥ 0.8's writer, which `save_pretrained` uses: it writes through a Rust `NamedTempFile` and renames it,
safetensors/safetensors#782); they are opened up to what the umask allows, so a lab can share one cache through a
group.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """`with replacing(path) as temporary: <write temporary>` — on success `temporary` becomes `path` (mode
    0666 minus the umask); on any exception it is removed and `path` is untouched."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def follow_umask(folder: Path) -> None:
    """Give `folder` and everything in it the mode the umask allows a new file (0666 minus the umask) or folder
    (0777 minus the umask), whatever mode the code that wrote them chose; symbolic links are left alone (their own
    mode means nothing, and their target is not ours)."""
    mask = umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            if not path.is_symlink():
                os.chmod(path, (0o777 if name in folders else 0o666) & ~mask)


def write_text(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically."""
    with replacing(path) as temporary:
        temporary.write_text(text)


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A fresh folder beside `target` (mode 0777 minus the umask) to build in; removed unless the caller renamed
    it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~umask())
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging)
