"""On-disk cache of rankings, keyed by a hash of everything a ranking depends on.

Files are safetensors (loading executes no code), written to a temporary name and renamed into place under a file
lock, so xdist workers asking for the same key compute it once and never see half a file. A file that fails to
parse, carries another key, has the wrong shape or non-finite values is reported and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.errors import CacheError

RANKING_CODE = ("harness.ranking", "harness.captioning", "harness.sites")


@functools.cache
def code_fingerprint() -> str:
    """Hash of the source of the modules that compute a ranking: editing them (even in an editable install whose
    version string does not move) invalidates cached rankings."""
    digest = hashlib.sha256()
    for name in RANKING_CODE:
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()[:16]


def cache_key(fields: Mapping[str, object]) -> str:
    """sha256 of the canonical JSON of `fields` (sorted keys): any changed input gives a new key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class RankingCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        return self.root / "rankings" / f"{key[:32]}.safetensors"

    def load_or_compute(
        self, fields: Mapping[str, object], shape: tuple[int, int], compute: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, str]:
        """(scores, key): from the cache when a valid entry exists, else computed once and stored."""
        return self.load_or_compute_many([(fields, shape)], lambda missing: [compute()])[0]

    def load_or_compute_many(
        self,
        entries: Sequence[tuple[Mapping[str, object], tuple[int, int]]],
        compute: Callable[[list[int]], list[torch.Tensor]],
    ) -> list[tuple[torch.Tensor, str]]:
        """Several rankings at once: those without a valid entry are computed together by `compute(indices)`
        (e.g. the parts of a joint site in the same passes) and stored one by one. All entries are locked while
        this runs (in key order, so two workers cannot deadlock)."""
        keys = [cache_key(fields) for fields, _ in entries]
        paths = [self.path_for(key) for key in keys]
        found: list[torch.Tensor | None] = [None] * len(entries)
        with ExitStack() as locks:
            for path in sorted(set(paths)):
                path.parent.mkdir(parents=True, exist_ok=True)
                locks.enter_context(FileLock(str(path) + ".lock"))
            for index, (path, key, (_, shape)) in enumerate(zip(paths, keys, entries, strict=True)):
                if path.exists():
                    found[index], problem = self._read(path, key, shape)
                    if problem is not None:
                        warnings.warn(
                            f"ranking cache file {path} is unusable ({problem}); recomputing it", stacklevel=3
                        )
            missing = [index for index, scores in enumerate(found) if scores is None]
            if missing:
                for index, scores in zip(missing, compute(missing), strict=True):
                    scores = scores.to(torch.float32).cpu().contiguous()
                    shape = entries[index][1]
                    if tuple(scores.shape) != shape or not torch.isfinite(scores).all():
                        raise CacheError(
                            f"refusing to cache a ranking of shape {tuple(scores.shape)} with non-finite "
                            f"values or a shape other than {shape}"
                        )
                    self._write(paths[index], scores, keys[index], entries[index][0])
                    found[index] = scores
        return list(zip(found, keys, strict=True))

    @staticmethod
    def _read(path: Path, key: str, shape: tuple[int, int]) -> tuple[torch.Tensor | None, str | None]:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                stored_key = (handle.metadata() or {}).get("key")
            scores = load_file(str(path))["scores"]
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            return None, f"cannot be read: {error}"
        if stored_key != key:
            return None, f"it holds key {stored_key!r}, not {key!r}"
        if tuple(scores.shape) != shape:
            return None, f"shape {tuple(scores.shape)} instead of {shape}"
        if not torch.isfinite(scores).all():
            return None, "non-finite scores"
        return scores, None

    @staticmethod
    def _write(path: Path, scores: torch.Tensor, key: str, fields: Mapping[str, object]) -> None:
        metadata = {"key": key, "fields": json.dumps(fields, sort_keys=True, default=str)}
        handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file({"scores": scores}, temporary, metadata=metadata)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
