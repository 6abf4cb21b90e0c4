"""On-disk cache of rankings, keyed by a hash of everything a ranking depends on.

Files are safetensors (loading executes no code), written to a temporary name and renamed into place under a file
lock, so xdist workers asking for the same key compute it once and never see half a file, and a valid entry is
read with no lock and no write access (a lab can share a read-only cache). A file that fails to parse, carries
another key, has the wrong shape or non-finite values is reported and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.core import atomic_files
from harness.core.errors import CacheError

RANKING_CODE = (
    "harness.science.ranking",
    "harness.science.ranking_options",
    "harness.models.captioning",
    "harness.models.prompts",
    "harness.models.sites",
)


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
        (e.g. the parts of a joint site in the same passes) and stored one by one.

        Valid entries are read without a lock and without write access (files are only ever renamed into place,
        so a reader never sees half of one). Missing ones are computed under the entries' locks (taken in key
        order, so two workers cannot deadlock); in a cache that cannot be written they are computed and not
        stored, with a warning."""
        keys = [cache_key(fields) for fields, _ in entries]
        paths = [self.path_for(key) for key in keys]
        shapes = [shape for _, shape in entries]
        found = [self._read_valid(*entry, quiet=True) for entry in zip(paths, keys, shapes, strict=True)]
        if all(scores is not None for scores in found):
            return list(zip(found, keys, strict=True))
        with ExitStack() as locks:
            writable = self._lock(locks, sorted(set(paths)))
            for index, entry in enumerate(zip(paths, keys, shapes, strict=True)):
                if found[index] is None:  # another worker may have stored it while we waited for the lock
                    found[index] = self._read_valid(*entry, quiet=False)
            missing = [index for index, scores in enumerate(found) if scores is None]
            if missing:
                for index, scores in zip(missing, compute(missing), strict=True):
                    fields, shape = entries[index]
                    scores = _checked(scores.to(torch.float32).cpu().contiguous(), shape, fields)
                    if writable:
                        self._write(paths[index], scores, keys[index], fields)
                    found[index] = scores
        return list(zip(found, keys, strict=True))

    def _lock(self, locks: ExitStack, paths: list[Path]) -> bool:
        """Take the entries' locks; False (after a warning) when the cache folder cannot be written."""
        try:
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                locks.enter_context(FileLock(str(path) + ".lock"))
        except OSError as error:
            locks.close()
            warnings.warn(
                f"ranking cache {self.root / 'rankings'} cannot be written ({error}); the missing rankings are "
                "computed but not stored. Pass --can-cache-dir (or set CAN_HARNESS_CACHE) to a writable folder "
                "to keep them.",
                stacklevel=4,
            )
            return False
        return True

    def _read_valid(self, path: Path, key: str, shape: tuple[int, int], *, quiet: bool) -> torch.Tensor | None:
        """The stored scores when the entry is valid; an unusable file is reported (unless `quiet`) and ignored."""
        if not path.exists():
            return None
        scores, problem = self._read(path, key, shape)
        if problem is not None and not quiet:
            warnings.warn(f"ranking cache file {path} is unusable ({problem}); recomputing it", stacklevel=4)
        return scores

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
        try:
            with atomic_files.replacing(path) as temporary:
                save_file({"scores": scores}, str(temporary), metadata=metadata)
        except OSError as error:
            raise CacheError(
                f"cannot store a ranking in {path} ({error}); nothing was left half-written. Free space there or "
                "pass --can-cache-dir (or set CAN_HARNESS_CACHE) to another folder."
            ) from error


def _checked(scores: torch.Tensor, shape: tuple[int, int], fields: Mapping[str, object]) -> torch.Tensor:
    """Refuse to store (or use) a ranking that is not finite or has the wrong shape, naming its curve."""
    curve = f"the {fields.get('method', '?')} ranking of {fields.get('model', '?')} {fields.get('site', '?')}"
    if tuple(scores.shape) != shape:
        raise CacheError(f"{curve} has shape {tuple(scores.shape)}, expected {shape}")
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise CacheError(
            f"{curve} has {bad} non-finite score(s) of {scores.numel()} (NaN or inf): the model's "
            "activations or gradients overflowed or its weights are not finite; try --can-dtype float32, or "
            "check the checkpoint"
        )
    return scores
