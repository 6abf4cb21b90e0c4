"""The code a result is computed by, as one hash: every Python source file of the installed `harness` package
except the layers that only present results (the reporting layer, the pytest plugin).

Nothing is listed by hand: a module added anywhere below (a new ranking method, image decoding, text windows, a
family) is covered the day it is written, and editing any of them, even in an editable install whose version
string does not move, gives a new fingerprint, so rankings cached by older code are computed again.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # harness/
# what only presents or schedules results, never changes a number: relative to the package root
PRESENTATION = ("reporting", "plugin")


def fingerprinted_sources(root: Path = PACKAGE_ROOT) -> list[Path]:
    """The package's Python sources that enter the fingerprint, in a stable (relative path) order."""
    sources = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in PRESENTATION or "__pycache__" in relative.parts:
            continue
        sources.append(path)
    return sources


@functools.cache
def code_fingerprint() -> str:
    """The fingerprint of the installed package, hashed once per process."""
    return fingerprint_of(PACKAGE_ROOT)


def fingerprint_of(root: Path) -> str:
    """sha256 over (relative path, content) of every fingerprinted source under `root`."""
    digest = hashlib.sha256()
    for path in fingerprinted_sources(root):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
