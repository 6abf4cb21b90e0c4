"""Exact checkpoint identity: every byte of every weight and config file enters the digest, hashed once per file
and remembered by (path, size, mtime_ns, ctime_ns, inode); a Hugging Face blob is hashed like any other file, its
name is never trusted (tests/test_tamper_weights.py replays the tampering this rules out)."""

from __future__ import annotations

import hashlib
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
    """A config and 8 MiB of random weights, written just now (so not yet remembered when digested)."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(random.Random(0).randbytes(FILE_BYTES))
    return folder


@pytest.fixture
def settled(checkpoint) -> Path:
    """The checkpoint once its files are old enough for their digests to be remembered."""
    settle(*checkpoint.iterdir())
    return checkpoint


def settle(*files: Path) -> None:
    """Wait until no file's mtime or ctime is within the racy window (a file changed in the last two seconds is
    hashed but not remembered); the ctime cannot be dated back, so this waits."""
    newest = max(max(file.stat().st_mtime_ns, file.stat().st_ctime_ns) for file in files)
    time.sleep(max(0, newest + weight_digest.RACY_NS - time.time_ns()) / 1e9 + 0.05)


def rewrite_float(path: Path, offset: int, value: float) -> None:
    """Overwrite the 4 bytes at `offset` with a float32 in place (same size, same inode)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, FILE_BYTES // 4 - 1), value=st.sampled_from([float("nan"), 3.0, -0.0, 1e-30]))
def test_one_float_changed_anywhere_changes_the_digest(settled, tmp_path_factory, offset, value):
    """Any float of the file, set to NaN or another value, gives another digest, with the memo in use: the
    edit changes the file's mtime and ctime, so the remembered digest is not trusted."""
    cache = tmp_path_factory.mktemp("cache")
    weights = settled / "model.safetensors"
    original = weights.read_bytes()
    before = folder_digest(settled, cache)
    try:
        rewrite_float(weights, offset * 4, value)
        if weights.read_bytes() == original:
            return  # the value was already there: nothing changed
        assert folder_digest(settled, cache) != before
    finally:
        weights.write_bytes(original)
    assert folder_digest(settled, cache) == before


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


def test_each_file_is_read_once_then_remembered(settled, tmp_path, hashed_files):
    """A second digest reads no byte; a replaced file (new inode, same size and mtime) is re-read."""
    cache = tmp_path / "cache"
    first = folder_digest(settled, cache)
    assert sorted(p.name for p in hashed_files) == ["config.json", "model.safetensors"]
    hashed_files.clear()
    assert folder_digest(settled, cache) == first
    assert hashed_files == []

    weights = settled / "model.safetensors"
    stat = weights.stat()
    replacement = settled / "replacement.tmp"
    shutil.copy2(weights, replacement)
    os.replace(replacement, weights)  # same bytes, same mtime (copy2), new inode
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_ino != stat.st_ino
    assert folder_digest(settled, cache) == first
    assert [p.name for p in hashed_files] == ["model.safetensors"]


@pytest.mark.parametrize("mtime", ["now", "an hour ago"])
def test_a_freshly_written_file_is_hashed_but_not_remembered(checkpoint, tmp_path, hashed_files, mtime):
    """A file changed within the last two seconds is re-read on every digest: a second quick write might move
    neither its mtime nor its ctime (git's racy-clean rule). An mtime set back does not make it old: its ctime,
    which `os.utime` moves to now, is just as recent."""
    if mtime == "an hour ago":
        past = time.time_ns() - 3600 * 10**9
        for file in checkpoint.iterdir():
            os.utime(file, ns=(past, past))
    cache = tmp_path / "cache"
    first = folder_digest(checkpoint, cache)
    assert folder_digest(checkpoint, cache) == first
    assert sorted(p.name for p in hashed_files) == ["config.json"] * 2 + ["model.safetensors"] * 2
    assert not (cache / weight_digest.MEMO_FOLDER).exists()


def test_an_unwritable_cache_costs_a_rehash_and_a_warning(settled, tmp_path, hashed_files):
    """The memo is a saving, not a requirement: a cache that cannot take it still gives the exact digest."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    with pytest.warns(UserWarning, match="cannot remember the weight digest"):
        digest = folder_digest(settled, blocked)
    assert digest == folder_digest(settled, None)


def test_a_corrupt_memo_is_rehashed_with_a_warning(settled, tmp_path, hashed_files):
    """A memo that is not JSON is ignored, naming it; the files are read again and the memos rewritten."""
    cache = tmp_path / "cache"
    first = folder_digest(settled, cache)
    memos = sorted((cache / weight_digest.MEMO_FOLDER).iterdir())
    assert len(memos) == 2
    for memo in memos:
        memo.write_text("{not json")
    hashed_files.clear()
    with pytest.warns(UserWarning, match="cannot be read as JSON") as caught:
        assert folder_digest(settled, cache) == first
    messages = [str(warning.message) for warning in caught]
    for memo in memos:
        assert sum(str(memo) in message for message in messages) == 1
    assert len(hashed_files) == 2
    hashed_files.clear()
    assert folder_digest(settled, cache) == first
    assert hashed_files == []


def test_hub_cache_files_are_identified_by_their_content_not_their_blob_name(tmp_path, hashed_files):
    """A Hugging Face blob is hashed like any other file (its bytes are read through the snapshot symlink): the
    same bytes under another blob name have the same digest, and a blob whose name is a lie is not believed."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "commit"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    data = random.Random(1).randbytes(4096)
    (blobs / ("a" * 64)).write_bytes(data)
    (snapshot / "model.safetensors").symlink_to(blobs / ("a" * 64))
    before = folder_digest(snapshot, tmp_path / "cache")
    assert hashed_files == [(blobs / ("a" * 64)).resolve()]
    expected = hashlib.sha256(f"model.safetensors:4096:{hashlib.sha256(data).hexdigest()}\n".encode())
    assert before == expected.hexdigest()[:16]
    (blobs / ("b" * 64)).write_bytes(data)
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(blobs / ("b" * 64))
    assert folder_digest(snapshot, tmp_path / "cache") == before
