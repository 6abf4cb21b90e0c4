"""Exact checkpoint identity: every byte of every weight and config file enters the digest, hashed once per file
and remembered by (path, size, mtime_ns, inode); Hugging Face blobs are identified by their content-hash name."""

from __future__ import annotations

import os
import random
import shutil
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.models import weight_digest
from harness.models.weight_digest import folder_digest

FILE_BYTES = 8 << 20  # twice what a sampling of 64 blocks of 64 KiB would read: any edit must count


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(random.Random(0).randbytes(FILE_BYTES))
    for file in folder.iterdir():
        age(file)
    return folder


def age(path: Path, seconds: int = 60) -> None:
    """Date the file's mtime back: a file written in the last seconds is hashed but not remembered."""
    past = time.time_ns() - seconds * 10**9
    os.utime(path, ns=(past, past))


@pytest.fixture
def hash_count(monkeypatch) -> list[Path]:
    """The files whose bytes were read to hash them, in order."""
    read: list[Path] = []
    original = weight_digest.stream_sha256

    def counting(path: Path, task=None) -> str:
        read.append(path)
        return original(path, task)

    monkeypatch.setattr(weight_digest, "stream_sha256", counting)
    return read


def rewrite_float(path: Path, offset: int, value: float) -> None:
    """Overwrite the 4 bytes at `offset` with a float32 in place (same size, same inode)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, FILE_BYTES // 4 - 1), value=st.sampled_from([float("nan"), 3.0, -0.0, 1e-30]))
def test_one_float_changed_anywhere_changes_the_digest(checkpoint, tmp_path_factory, offset, value):
    """Any float of the file, set to NaN or another value, gives another digest, with the memo in use: the
    edit changes the file's mtime, so the remembered digest is not trusted."""
    cache = tmp_path_factory.mktemp("cache")
    weights = checkpoint / "model.safetensors"
    original = weights.read_bytes()
    before = folder_digest(checkpoint, cache)
    try:
        rewrite_float(weights, offset * 4, value)
        if weights.read_bytes() == original:
            return  # the value was already there: nothing changed
        assert folder_digest(checkpoint, cache) != before
    finally:
        weights.write_bytes(original)
    assert folder_digest(checkpoint, cache) == before


def test_the_digest_ignores_location_and_mtimes(checkpoint, tmp_path):
    """The same bytes elsewhere, or touched, have the same digest (a moved checkpoint keeps its rankings)."""
    before = folder_digest(checkpoint, tmp_path / "cache")
    moved = Path(shutil.copytree(checkpoint, tmp_path / "elsewhere"))
    os.utime(moved / "model.safetensors", (0, 0))
    assert folder_digest(moved, tmp_path / "cache") == before
    assert folder_digest(moved, None) == before


def test_an_added_or_renamed_weight_file_changes_the_digest(checkpoint, tmp_path):
    before = folder_digest(checkpoint, None)
    (checkpoint / "adapter.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    added = folder_digest(checkpoint, None)
    assert added != before
    (checkpoint / "adapter.safetensors").rename(checkpoint / "other.safetensors")
    assert folder_digest(checkpoint, None) not in (before, added)


def test_each_file_is_read_once_then_remembered(checkpoint, tmp_path, hash_count):
    """A second digest reads no byte; a replaced file (new inode, same size and mtime) is re-read, and so is a
    file written within the last two seconds, whose mtime a second quick write might not move."""
    cache = tmp_path / "cache"
    first = folder_digest(checkpoint, cache)
    assert sorted(p.name for p in hash_count) == ["config.json", "model.safetensors"]
    hash_count.clear()
    assert folder_digest(checkpoint, cache) == first
    assert hash_count == []

    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    replacement = checkpoint / "replacement.tmp"
    shutil.copy2(weights, replacement)
    os.replace(replacement, weights)  # same bytes, same mtime (copy2), new inode
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_ino != stat.st_ino
    assert folder_digest(checkpoint, cache) == first
    assert [p.name for p in hash_count] == ["model.safetensors"]

    hash_count.clear()
    (checkpoint / "config.json").write_text('{"model_type": "llama"}')  # same bytes, written just now
    for _ in range(2):
        assert folder_digest(checkpoint, cache) == first
    assert [p.name for p in hash_count] == ["config.json", "config.json"]


def test_an_unwritable_cache_costs_a_rehash_and_a_warning(checkpoint, tmp_path, hash_count):
    """The memo is a saving, not a requirement: a cache that cannot take it still gives the exact digest."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    with pytest.warns(UserWarning, match="cannot remember the weight digest"):
        digest = folder_digest(checkpoint, blocked)
    assert digest == folder_digest(checkpoint, None)


def test_a_corrupt_memo_is_rehashed(checkpoint, tmp_path, hash_count):
    cache = tmp_path / "cache"
    first = folder_digest(checkpoint, cache)
    for memo in (cache / weight_digest.MEMO_FOLDER).iterdir():
        memo.write_text("{not json")
    hash_count.clear()
    assert folder_digest(checkpoint, cache) == first
    assert len(hash_count) == 2


def test_hub_cache_files_are_identified_by_their_blob_name(tmp_path, hash_count):
    """A Hugging Face blob is named by the hash of its content: the name is the digest, no byte is read. By
    design, a blob rewritten in place behind the hub cache's back is not detected."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "commit"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / ("a" * 64)).write_bytes(random.Random(1).randbytes(4096))
    (snapshot / "model.safetensors").symlink_to(blobs / ("a" * 64))
    before = folder_digest(snapshot, tmp_path / "cache")
    assert hash_count == []
    (blobs / ("b" * 64)).write_bytes((blobs / ("a" * 64)).read_bytes())
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(blobs / ("b" * 64))
    assert folder_digest(snapshot, tmp_path / "cache") != before


def test_plain_files_in_a_folder_named_blobs_are_hashed(tmp_path):
    """Only symlinks into blobs/ are identified by name: a regular file in a folder called blobs is hashed."""
    folder = tmp_path / "blobs"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(4096))
    before = folder_digest(folder, None)
    rewrite_float(weights, 2048, 1.0)
    assert folder_digest(folder, None) != before
