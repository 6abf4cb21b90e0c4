"""The on-disk ranking cache: keys, load-or-compute, corruption, concurrent writers and the file format."""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.core.errors import CacheError
from harness.runner.ranking_cache import RankingCache, cache_key

SHAPE = (2, 3)
FIELDS = {
    "model": "tiny", "site": "lm.down_proj", "method": "can", "alpha": 1.0, "images": ["a", "b"],
    "options": {"x": 1},
}  # fmt: skip
WRITERS = 4
GOOD = torch.tensor([[0.5, 0.25, 3.0], [1e-8, 7.0, 0.0]])


def changed(value):
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [changed(value[0]), *value[1:]] if value else ["x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    if value is None:
        return "main"
    raise TypeError(f"no change defined for {value!r}")


class Counted:
    """A compute function that counts its calls."""

    def __init__(self, result):
        self.result, self.calls = result, 0

    def __call__(self):
        self.calls += 1
        return self.result.clone()


def entry_metadata(scores: torch.Tensor, key: str, fields: Mapping[str, object] = FIELDS) -> dict[str, str]:
    """The metadata a current cache entry of `scores` carries, worked out here (hashlib over the tensor's bytes),
    not by the code under test: a file written with it differs from a genuine entry only where a test says."""
    return {
        "key": key,
        "fields": json.dumps(fields, sort_keys=True, default=str),
        "sha256": hashlib.sha256(scores.contiguous().numpy().tobytes()).hexdigest(),
        "dtype": str(scores.dtype).removeprefix("torch."),
        "shape": json.dumps(list(scores.shape)),
    }


T = TypeVar("T")


def cache_warnings(call: Callable[[], T]) -> tuple[T, list[str]]:
    """`call()`'s result and every ranking cache warning it raised (none hidden as already seen)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if str(w.message).startswith("ranking cache")]


def assert_unusable(messages: list[str], path: Path, reason: str) -> None:
    """`messages` is exactly one warning that the file at `path` is unusable for `reason` (a regex, matched at
    the start of the parenthesis) and is recomputed."""
    assert len(messages) == 1, messages
    pattern = re.escape(f"ranking cache file {path} is unusable (") + reason + r".*\); recomputing it"
    assert re.fullmatch(pattern, messages[0]), messages[0]


@pytest.fixture(scope="module")
def inputs(experiment):
    return experiment.ranking_inputs("lm.down_proj", "circle")


def test_every_ranking_input_changes_the_key(inputs):
    """Changing any single field of a real ranking's inputs gives a new key."""
    assert len(inputs) >= 15
    original = cache_key(inputs)
    for name, value in inputs.items():
        assert cache_key({**inputs, name: changed(value)}) != original, name


def test_adding_or_removing_a_field_changes_the_key(inputs):
    """The key covers the set of fields, not only their values."""
    original = cache_key(inputs)
    assert cache_key({**inputs, "extra": None}) != original
    assert cache_key({name: v for name, v in inputs.items() if name != "category"}) != original


def test_key_is_stable_under_reordering(inputs):
    """Insertion order of the fields (and of nested dict entries) does not matter."""
    nested = {"a": 2, "backend": "pil", "z": 1}
    forward = {**inputs, "processor_kwargs": nested}
    backward = dict(reversed({**inputs, "processor_kwargs": dict(reversed(nested.items()))}.items()))
    assert list(backward) != list(forward)
    assert list(backward["processor_kwargs"]) != list(nested)
    assert cache_key(backward) == cache_key(forward)
    assert re.fullmatch(r"[0-9a-f]{64}", cache_key(inputs))


def test_inputs_differ_between_sites_and_categories(experiment, inputs):
    """Another site or another category is another ranking."""
    keys = {
        cache_key(inputs),
        cache_key(experiment.ranking_inputs("lm.mlp_hidden", "circle")),
        cache_key(experiment.ranking_inputs("lm.down_proj", "square")),
    }
    assert len(keys) == 3


def test_every_can_option_is_in_the_inputs(experiment, inputs):
    """Every option the ranking method reads is recorded with the value in use."""
    used = experiment.settings.ranking.used()
    assert set(used) == {"method", "alpha", "positions", "aggregation"}  # the default method, CAN
    for name, value in used.items():
        assert inputs[name] == value


def test_computes_once_then_loads(tmp_path):
    """The first call computes and stores; later calls (also from a new cache object) load bit-identical scores."""
    compute = Counted(GOOD)
    first, key = RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, compute)
    second, key_again = RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, compute)
    assert compute.calls == 1
    assert key == key_again == cache_key(FIELDS)
    assert first.dtype == second.dtype == torch.float32
    assert torch.equal(first.view(torch.int32), GOOD.view(torch.int32))
    assert torch.equal(second.view(torch.int32), GOOD.view(torch.int32))
    RankingCache(tmp_path).load_or_compute({**FIELDS, "site": "lm.up_proj"}, SHAPE, compute)
    assert compute.calls == 2


def test_float64_results_are_stored_as_float32(tmp_path):
    """Whatever dtype compute returns, the cache holds and returns float32."""
    computed, _ = RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, lambda: GOOD.double())
    loaded, _ = RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, Counted(GOOD))
    assert computed.dtype == loaded.dtype == torch.float32
    assert torch.equal(computed, loaded)


NAN = GOOD.clone().index_fill_(1, torch.tensor([1]), float("nan"))
INF = GOOD.clone().index_fill_(0, torch.tensor([0]), float("inf"))
TRANSPOSED = GOOD.reshape(3, 2)
# (tensors, metadata) of each corrupt entry, and the reason its warning gives. Each carries a genuine content
# record of what it holds, so the one defect named is the check that refuses it.
CORRUPT = {
    "other key": (lambda key: ({"scores": GOOD}, entry_metadata(GOOD, "0" * 64)), "it holds key '0000"),
    "no key": (lambda key: ({"scores": GOOD}, None), "it holds key None"),
    "no scores": (lambda key: ({"other": GOOD}, entry_metadata(GOOD, key)), r"it holds the tensors \['other'\]"),
    "extra tensor": (
        lambda key: ({"scores": GOOD, "z": GOOD.clone()}, entry_metadata(GOOD, key)),
        r"it holds the tensors \['scores', 'z'\], expected one named 'scores'",
    ),
    "wrong shape": (
        lambda key: ({"scores": TRANSPOSED}, entry_metadata(TRANSPOSED, key)),
        r"shape \(3, 2\) instead of \(2, 3\)",
    ),
    "metadata shape": (
        lambda key: ({"scores": GOOD}, {**entry_metadata(GOOD, key), "shape": "[3, 2]"}),
        re.escape("its metadata records shape '[3, 2]', but its scores have '[2, 3]'"),
    ),
    "metadata dtype": (
        lambda key: ({"scores": GOOD}, {**entry_metadata(GOOD, key), "dtype": "float64"}),
        "its metadata records dtype 'float64', but its scores have 'float32'",
    ),
    "nan": (lambda key: ({"scores": NAN}, entry_metadata(NAN, key)), r"2 non-finite score\(s\) of 6"),
    "inf": (lambda key: ({"scores": INF}, entry_metadata(INF, key)), r"3 non-finite score\(s\) of 6"),
}
UNREADABLE = {"truncated", "empty", "garbage"}


def _write_bad_file(kind: str, key: str, path: Path) -> str:
    """Write a corrupt cache file of the given kind at `path`; the reason (regex) its warning must give."""
    if kind in UNREADABLE:
        save_file({"scores": GOOD}, str(path), metadata=entry_metadata(GOOD, key))
        data = path.read_bytes()
        contents = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": bytes(range(256)) * 4}
        path.write_bytes(contents[kind])
        return "cannot be read: Error while deserializing header"
    entry, reason = CORRUPT[kind]
    tensors, metadata = entry(key)
    save_file(tensors, str(path), metadata=metadata)
    return reason


@pytest.mark.parametrize("kind", sorted(UNREADABLE) + list(CORRUPT))
def test_corrupt_file_is_reported_and_rebuilt(tmp_path, kind):
    """An unusable file warns once (naming the file and what is wrong), is recomputed, and the rewritten file
    then loads silently."""
    cache, key = RankingCache(tmp_path), cache_key(FIELDS)
    path = cache.path_for(key)
    path.parent.mkdir(parents=True)
    reason = _write_bad_file(kind, key, path)
    compute = Counted(GOOD)
    (scores, _), messages = cache_warnings(lambda: cache.load_or_compute(FIELDS, SHAPE, compute))
    assert_unusable(messages, path, reason)
    assert compute.calls == 1
    assert torch.equal(scores, GOOD)
    assert torch.equal(load_file(str(path))["scores"], GOOD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, compute)
    assert compute.calls == 1
    assert torch.equal(again, GOOD)


def _compute_slowly(counter: str) -> torch.Tensor:
    time.sleep(0.5)
    with open(counter, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return GOOD.clone()


def _ask_concurrently(root: str, counter: str, barrier, results) -> None:
    barrier.wait()
    scores, key = RankingCache(Path(root)).load_or_compute(
        FIELDS, SHAPE, functools.partial(_compute_slowly, counter)
    )
    results.put((key, scores.view(torch.int32).tolist()))


def test_concurrent_processes_compute_once(tmp_path):
    """Four processes asking for the same key at the same moment compute it once, get identical scores and leave
    one valid entry."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    counter = tmp_path / "calls.txt"
    processes = [
        context.Process(target=_ask_concurrently, args=(str(tmp_path / "cache"), str(counter), barrier, results))
        for _ in range(WRITERS)
    ]
    for process in processes:
        process.start()
    try:
        answers = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0] * WRITERS
    assert counter.read_text().count("\n") == 1
    assert answers == [(cache_key(FIELDS), GOOD.view(torch.int32).tolist())] * WRITERS
    stored = [p for p in (tmp_path / "cache").rglob("*") if not p.name.endswith(".lock") and p.is_file()]
    assert [p.name for p in stored] == [RankingCache(tmp_path / "cache").path_for(cache_key(FIELDS)).name]
    assert torch.equal(load_file(str(stored[0]))["scores"], GOOD)


def test_each_bad_entry_warns_once_and_all_are_recomputed_together(tmp_path):
    """Two unusable entries asked for together: one warning per file (the quiet unlocked read does not warn, the
    locked re-read does), one compute call for both, and both rewritten."""
    cache = RankingCache(tmp_path)
    entries = [(FIELDS, SHAPE), ({**FIELDS, "site": "lm.up_proj"}, SHAPE)]
    paths = [cache.path_for(cache_key(fields)) for fields, _ in entries]
    paths[0].parent.mkdir(parents=True)
    reasons = [_write_bad_file("nan", cache_key(entries[0][0]), paths[0]), "cannot be read"]
    paths[1].write_bytes(b"")
    calls: list[list[int]] = []

    def compute(missing: list[int]) -> list[torch.Tensor]:
        calls.append(missing)
        return [GOOD.clone() for _ in missing]

    results, messages = cache_warnings(lambda: cache.load_or_compute_many(entries, compute))
    assert len(messages) == 2
    for path, reason, message in zip(paths, reasons, messages, strict=True):
        assert_unusable([message], path, reason)
    assert calls == [[0, 1]]
    assert all(torch.equal(scores, GOOD) for scores, _ in results)
    assert all(torch.equal(load_file(str(path))["scores"], GOOD) for path in paths)


def test_file_is_safetensors_with_key_and_fields(tmp_path, inputs):
    """The stored file is plain safetensors (no pickle): one 'scores' tensor; its metadata holds the key, the JSON
    fields, and the sha256 of the scores' bytes, their dtype and shape."""
    cache = RankingCache(tmp_path)
    _, key = cache.load_or_compute(inputs, SHAPE, Counted(GOOD))
    path = cache.path_for(key)
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{"
    assert json.loads(data[8 : 8 + header_length])["scores"]["shape"] == list(SHAPE)
    with safe_open(str(path), framework="pt") as handle:
        assert list(handle.keys()) == ["scores"]
        assert torch.equal(handle.get_tensor("scores"), GOOD)
        metadata = handle.metadata()
    assert metadata["key"] == key
    assert json.loads(metadata["fields"]) == inputs
    assert metadata["sha256"] == hashlib.sha256(data[-GOOD.numel() * 4 :]).hexdigest()
    assert metadata["sha256"] == hashlib.sha256(GOOD.numpy().tobytes()).hexdigest()
    assert (metadata["dtype"], metadata["shape"]) == ("float32", "[2, 3]")
    assert set(metadata) == {"key", "fields", "sha256", "dtype", "shape"}


@pytest.mark.parametrize(
    "result",
    [
        torch.zeros(3, 2),
        torch.zeros(6),
        GOOD.clone().index_fill_(1, torch.tensor([2]), float("nan")),
        GOOD.clone().index_fill_(1, torch.tensor([0]), float("inf")),
        GOOD.clone().index_fill_(1, torch.tensor([0]), float("-inf")),
        GOOD.clone().index_fill_(1, torch.tensor([1]), -0.5),
    ],
    ids=["transposed", "flat", "nan", "inf", "-inf", "negative"],
)
def test_bad_compute_result_raises_and_stores_nothing(tmp_path, result):
    """A wrong-shaped, non-finite or negative result raises CacheError naming the curve (and how many values are
    wrong), and leaves no cache file (a negative one would be refused on every read); a later good one is kept."""
    cache = RankingCache(tmp_path)
    if result.shape != SHAPE:
        expected = "has shape"
    elif not torch.isfinite(result).all():
        expected = r"has 2 non-finite score\(s\) of 6 \(NaN or inf\)"
    else:
        expected = r"has 2 negative score\(s\) of 6 \(the lowest -0\.5\): every ranking method scores magnitudes"
    with pytest.raises(CacheError, match=rf"the can ranking of tiny lm\.down_proj {expected}"):
        cache.load_or_compute(FIELDS, SHAPE, lambda: result)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    scores, _ = cache.load_or_compute(FIELDS, SHAPE, Counted(GOOD))
    assert torch.equal(scores, GOOD)
    assert cache.path_for(cache_key(FIELDS)).is_file()


def test_failing_compute_stores_nothing(tmp_path):
    """An exception from compute propagates and leaves no cache file."""

    def fail():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, fail)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


READ_ONLY_CHECK = """
import json, sys, warnings
from pathlib import Path
import torch
from harness.runner.ranking_cache import RankingCache
fields, shape, good = json.loads(sys.argv[1] if len(sys.argv) > 1 else {spec!r})
cache = RankingCache(Path({root!r}))
def must_not_run():
    raise AssertionError("a valid entry was recomputed")
with warnings.catch_warnings():
    warnings.simplefilter("error")
    scores, _ = cache.load_or_compute(fields, tuple(shape), must_not_run)
assert scores.tolist() == good, scores
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    other, _ = cache.load_or_compute({{**fields, "site": "lm.up_proj"}}, tuple(shape), lambda: torch.ones(shape))
assert other.tolist() == torch.ones(shape).tolist()
print("WARNED:", " ".join(str(w.message) for w in caught))
"""


def test_a_read_only_cache_serves_its_entries_and_computes_the_rest(tmp_path, run_read_only):
    """A cache the process cannot write (a lab's shared one): a valid entry loads with no lock and no write, a
    missing one is computed, returned and not stored, with a warning that says how to keep it."""
    RankingCache(tmp_path).load_or_compute(FIELDS, SHAPE, Counted(GOOD))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    spec = json.dumps([FIELDS, list(SHAPE), GOOD.tolist()])
    result = run_read_only(["-c", READ_ONLY_CHECK.format(spec=spec, root=str(tmp_path))], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cannot be written" in result.stdout and "--can-cache-dir" in result.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC while storing: a CacheError naming the file and what to do; no temporary or partial file stays,
    and the next run (with space again) computes and stores normally."""
    import errno

    import harness.runner.ranking_cache as module

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "save_file", full_disk)
    cache = RankingCache(tmp_path)
    with pytest.raises(CacheError, match=r"cannot store a ranking in .*No space left.*--can-cache-dir"):
        cache.load_or_compute(FIELDS, SHAPE, Counted(GOOD))
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    monkeypatch.undo()
    compute = Counted(GOOD)
    assert torch.equal(cache.load_or_compute(FIELDS, SHAPE, compute)[0], GOOD)
    assert compute.calls == 1 and cache.path_for(cache_key(FIELDS)).is_file()


def test_stored_files_and_built_folders_follow_the_umask(tmp_path):
    """With a group-sharing umask (002) a ranking entry is 0664 and a built cache folder 0775, not tempfile's
    0600 / 0700: a lab can share one cache through a group."""
    from harness.core.store import build_once

    previous = os.umask(0o002)
    try:
        cache = RankingCache(tmp_path)
        _, key = cache.load_or_compute(FIELDS, SHAPE, Counted(GOOD))
        built = build_once(tmp_path / "zoo" / "asset", lambda staging: (staging / "weights.bin").write_bytes(b"w"))
    finally:
        os.umask(previous)
    assert cache.path_for(key).stat().st_mode & 0o777 == 0o664
    assert built.stat().st_mode & 0o777 == 0o775
    assert (built / "weights.bin").stat().st_mode & 0o777 == 0o664


def test_building_into_a_read_only_cache_is_a_clear_error(tmp_path, run_read_only):
    """An asset missing from a cache this user cannot write: a CacheError saying what to do, no traceback from
    the lock file."""
    code = (
        "from pathlib import Path\nfrom harness.core.errors import CacheError\n"
        "from harness.core.store import build_once\n"
        f"try:\n    build_once(Path({str(tmp_path / 'zoo' / 'asset')!r}), lambda staging: None)\n"
        "except CacheError as error:\n    print('CACHE ERROR:', error)\n"
    )
    (tmp_path / "zoo").mkdir()
    result = run_read_only(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CACHE ERROR: asset is not built in the cache" in result.stdout and "--can-cache-dir" in result.stdout
