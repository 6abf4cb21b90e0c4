"""On-disk cache of rankings, keyed by a hash of everything a ranking depends on.

Files are safetensors (loading executes no code), written to a temporary name and renamed into place under a file
lock, so xdist workers asking for the same key compute it once and never see half a file, and a valid entry is
read with no lock and no write access (a lab can share a read-only cache).

An entry's content is checked, not trusted: its metadata records the key, the ranking's fields, and the sha256,
dtype and shape of the scores' raw bytes. A file is used only when it parses, carries the key, holds one float32
"scores" tensor of the expected shape whose dtype, shape and sha256 match its metadata, all finite and none
negative. Any other file (corrupt, tampered with, or written before entries carried a digest) is reported and
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from harness.core import atomic_files
from harness.core.errors import CacheError


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
        """(scores, None) for a usable entry, else (None, what makes it unusable) for the warning."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata, names = handle.metadata() or {}, list(handle.keys())
                if names != ["scores"]:
                    return None, f"it holds the tensors {names}, expected one named 'scores'"
                scores = handle.get_tensor("scores")
        except (SafetensorError, OSError) as error:
            return None, f"cannot be read: {error}"
        problem = _content_problem(scores, metadata, key, shape)
        return (None, problem) if problem is not None else (scores, None)

    @staticmethod
    def _write(path: Path, scores: torch.Tensor, key: str, fields: Mapping[str, object]) -> None:
        """Store float32 `scores` with their key, fields and content record, renamed into place whole."""
        metadata = {
            "key": key,
            "fields": json.dumps(fields, sort_keys=True, default=str),
            **_content_record(scores),
        }
        try:
            with atomic_files.replacing(path) as temporary:
                save_file({"scores": scores}, str(temporary), metadata=metadata)
        except OSError as error:
            raise CacheError(
                f"cannot store a ranking in {path} ({error}); nothing was left half-written. Free space there or "
                "pass --can-cache-dir (or set CAN_HARNESS_CACHE) to another folder."
            ) from error


def _content_record(scores: torch.Tensor) -> dict[str, str]:
    """What an entry's metadata records of its float32 scores, to check them against on read: the sha256 of their
    raw bytes (little-endian, as safetensors stores them), their dtype and their shape (JSON)."""
    raw = scores.contiguous().numpy().astype("<f4", copy=False).tobytes()
    return {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "dtype": _dtype_name(scores.dtype),
        "shape": json.dumps(list(scores.shape)),
    }


def _dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32: the name an entry's metadata and the warnings use."""
    return str(dtype).removeprefix("torch.")


def _content_problem(
    scores: torch.Tensor, metadata: Mapping[str, str], key: str, shape: tuple[int, int]
) -> str | None:
    """What makes a parsed entry's content unusable, or None when nothing does. Scores of another dtype are
    refused by name, never converted: int64 or bool "scores" are not a ranking, and float16 ones lost precision."""
    if metadata.get("key") != key:
        return f"it holds key {metadata.get('key')!r}, not {key!r}"
    if "sha256" not in metadata:
        return "written without a content digest, by a harness older than the digest check"
    if scores.dtype != torch.float32:
        return f"its scores are {_dtype_name(scores.dtype)}, expected float32"
    if tuple(scores.shape) != shape:
        return f"shape {tuple(scores.shape)} instead of {shape}"
    record = _content_record(scores)
    for name in ("dtype", "shape"):
        if metadata.get(name) != record[name]:
            return f"its metadata records {name} {metadata.get(name)!r}, but its scores have {record[name]!r}"
    if metadata["sha256"] != record["sha256"]:
        return (
            f"content sha256 {record['sha256']} differs from the {metadata['sha256']} recorded when it was "
            "written: its data changed since"
        )
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        return f"{bad} non-finite score(s) of {scores.numel()}"
    negatives = _negatives(scores)
    return None if negatives is None else f"{negatives}, but no ranking method scores below 0"


def _negatives(scores: torch.Tensor) -> str | None:
    """'N negative score(s) of M (the lowest x)', or None when every score is ≥ 0."""
    # Every method of harness.science.ranking scores a magnitude (can |a|·|∂L/∂a|^α, activation |a|, gradient
    # |∂L/∂a|, pcicn mean |a_clean − a_noisy|; then a weighted mean or a max over positions, averaged over images)
    # or draws uniformly from [0, 1) (random): a negative score is damage, never a ranking's.
    negative = int((scores < 0).sum())
    if not negative:
        return None
    return f"{negative} negative score(s) of {scores.numel()} (the lowest {scores.min().item():.6g})"


def _checked(scores: torch.Tensor, shape: tuple[int, int], fields: Mapping[str, object]) -> torch.Tensor:
    """Refuse to store (or use) a ranking that has the wrong shape, is not finite or has a negative score (which
    the cache would refuse on every read), naming its curve."""
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
    negatives = _negatives(scores)
    if negatives is not None:
        raise CacheError(
            f"{curve} has {negatives}: every ranking method scores magnitudes or uniform draws in [0, 1), and "
            "the cache refuses a negative score on every read"
        )
    return scores
