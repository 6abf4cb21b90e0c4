"""Fault-and-tamper suite, ranking cache: each test replays a defect found by probing the cache and shows the
fixed behaviour.

The defects: a cached ranking was trusted once it parsed with the right key, shape and finite values. One byte
changed in the data section made one neuron the top of the ranking and the search used it (exit code 0); scores
swapped for int64, bool, reversed or negated ones under the genuine entry's metadata were used too. Now an entry
records the sha256, dtype and shape of its scores and is used only when its content matches them, is float32,
finite and not negative; anything else warns once, naming the file and the defect, and is recomputed.

Expected scores always come from a fresh compute of the real ranking of the tiny LLaVA (not through the cache),
and expected digests from hashlib here, never from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.runner.experiment import Experiment
from harness.runner.ranking_cache import RankingCache, cache_key
from harness.science.ranking import importance
from tests.test_ranking_cache import assert_unusable, cache_warnings, entry_metadata

SITE, CATEGORY = "lm.down_proj", "circle"
DIGEST_MISMATCH = r"content sha256 [0-9a-f]{64} differs from the [0-9a-f]{64} recorded when it was written"


class FreshRanking:
    """The CAN ranking of the tiny LLaVA's `SITE` on `CATEGORY`, computed afresh on every call (not through any
    cache), with the fields and shape its cache entry is stored under; counts its calls."""

    def __init__(self, experiment):
        self.experiment, self.site, self.calls = experiment, experiment.site(SITE), 0
        self.fields = experiment.ranking_inputs(SITE, CATEGORY)
        self.shape = (self.site.n_layers, self.site.width)

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        inputs, targets = self.experiment.ranking_data(CATEGORY)
        settings = self.experiment.settings
        return importance(
            self.experiment.loaded,
            self.site,
            inputs,
            targets,
            options=settings.ranking,
            batch_size=settings.batch_size,
        )


@pytest.fixture(scope="module")
def genuine(experiment) -> torch.Tensor:
    """The real scores, from a fresh compute."""
    scores = FreshRanking(experiment)()
    assert scores.dtype == torch.float32 and (scores > 0).all() and (scores < 2).all()
    return scores


@pytest.fixture
def stored(experiment, tmp_path, genuine) -> tuple[RankingCache, FreshRanking, Path]:
    """A cache in `tmp_path` holding the genuine entry (checked against `genuine`), a counting fresh compute, and
    the entry's path."""
    cache, fresh = RankingCache(tmp_path), FreshRanking(experiment)
    scores, key = cache.load_or_compute(fresh.fields, fresh.shape, fresh)
    assert fresh.calls == 1 and torch.equal(scores, genuine)
    return cache, FreshRanking(experiment), cache.path_for(key)


def _experiment_with(experiment: Experiment, cache: RankingCache) -> Experiment:
    """The tiny LLaVA's experiment (same model, probe, captions) with its rankings in `cache`, none in memory."""
    return Experiment(experiment.probe, experiment.settings, cache)


def _data_start(data: bytes) -> int:
    """Where the 'scores' tensor's bytes begin: after the 8-byte little-endian header length, the JSON header,
    and the tensor's own start offset within the data section."""
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    return 8 + header_length + header["scores"]["data_offsets"][0]


def _metadata(path: Path) -> dict[str, str]:
    """The metadata of the entry at `path`, as stored."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _assert_genuine_on_disk(path: Path, genuine: torch.Tensor) -> None:
    """The file at `path` holds the genuine scores, with the digest of their bytes computed here."""
    with safe_open(str(path), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("scores"), genuine)
        assert handle.metadata()["sha256"] == hashlib.sha256(genuine.numpy().tobytes()).hexdigest()


def _reads_silently(cache: RankingCache, fresh: FreshRanking) -> torch.Tensor:
    """Load the entry with every warning an error and a compute that must not run."""

    def must_not_run() -> torch.Tensor:
        raise AssertionError("a valid entry was recomputed")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cache.load_or_compute(fresh.fields, fresh.shape, must_not_run)[0]


def test_one_flipped_byte_in_the_data_is_caught_and_the_ranking_recomputed(experiment, tmp_path, genuine):
    """The probe's defect: one byte of one score changed on disk made that neuron the top one, and the search
    masked it. The tampered file passes every check the cache made before (key, shape, finite, not negative);
    the digest refuses it, the experiment ranks with the genuine scores, and the file is valid again."""
    cache = RankingCache(tmp_path)
    assert torch.equal(_experiment_with(experiment, cache).ranking(SITE, CATEGORY).scores, genuine)
    path = cache.path_for(cache_key(experiment.ranking_inputs(SITE, CATEGORY)))
    data = bytearray(path.read_bytes())
    start, (layers, width) = _data_start(data), genuine.shape
    neuron = (layers - 1) * width + 5  # the last layer's channel 5
    high_byte = start + 4 * neuron + 3  # sign and exponent of a little-endian float32
    assert not data[high_byte] & 0x40  # a score below 2: setting this bit multiplies it by 2^128
    data[high_byte] |= 0x40
    path.write_bytes(data)
    tampered = torch.frombuffer(data[start : start + 4 * genuine.numel()], dtype=torch.float32)
    assert torch.isfinite(tampered).all() and (tampered >= 0).all()
    assert int(tampered.argmax()) == neuron != int(genuine.flatten().argmax())

    ranking, messages = cache_warnings(lambda: _experiment_with(experiment, cache).ranking(SITE, CATEGORY))
    assert_unusable(messages, path, DIGEST_MISMATCH)
    assert torch.equal(ranking.scores, genuine)
    assert torch.equal(ranking.top_k(1), genuine.flatten().argmax().reshape(1))
    _assert_genuine_on_disk(path, genuine)


SUBSTITUTES = {
    "int64": (lambda scores: (scores * 1e6).round().long(), "its scores are int64, expected float32"),
    "bool": (lambda scores: scores > scores.median(), "its scores are bool, expected float32"),
    "float16": (lambda scores: scores.half(), "its scores are float16, expected float32"),
    "float64": (lambda scores: scores.double(), "its scores are float64, expected float32"),
    "reversed": (lambda scores: scores.flip((0, 1)), DIGEST_MISMATCH),
    "negated": (lambda scores: -scores, DIGEST_MISMATCH),
}


@pytest.mark.parametrize("substitute", list(SUBSTITUTES))
def test_substituted_scores_under_the_genuine_metadata_are_refused(stored, genuine, substitute):
    """Scores swapped for int64, bool, float16, float64, reversed or negated ones, under the genuine entry's key
    and metadata: refused with a reason naming the defect (a non-float32 dtype by name, never converted; a changed
    content by its digest), recomputed once to the genuine scores and stored again."""
    cache, fresh, path = stored
    make, reason = SUBSTITUTES[substitute]
    scores = make(genuine).contiguous()
    assert scores.dtype != genuine.dtype or not torch.equal(scores, genuine)
    save_file({"scores": scores}, str(path), metadata=_metadata(path))

    (result, _), messages = cache_warnings(lambda: cache.load_or_compute(fresh.fields, fresh.shape, fresh))
    assert_unusable(messages, path, reason)
    assert fresh.calls == 1 and torch.equal(result, genuine)
    _assert_genuine_on_disk(path, genuine)
    assert torch.equal(_reads_silently(cache, fresh), genuine)


def _one_negative(scores: torch.Tensor) -> torch.Tensor:
    """`scores` with one of them (layer 0, channel 3) replaced by minus the highest."""
    forged = scores.clone()
    forged[0, 3] = -scores.max()
    return forged


@pytest.mark.parametrize("forge", [_one_negative, torch.neg], ids=["one negative", "all negated"])
def test_negative_scores_with_a_correct_digest_are_refused(stored, genuine, forge):
    """A forged entry whose metadata (digest, dtype, shape) is right for its content, which holds negative
    scores: no ranking method scores below 0, so it is refused and recomputed."""
    cache, fresh, path = stored
    forged = forge(genuine)
    save_file(
        {"scores": forged}, str(path), metadata=entry_metadata(forged, cache_key(fresh.fields), fresh.fields)
    )
    negative, lowest = int((forged < 0).sum()), f"{float(forged.min()):.6g}"
    reason = re.escape(
        f"{negative} negative score(s) of {genuine.numel()} (the lowest {lowest}), but no ranking method scores "
        "below 0"
    )

    (result, _), messages = cache_warnings(lambda: cache.load_or_compute(fresh.fields, fresh.shape, fresh))
    assert_unusable(messages, path, reason)
    assert fresh.calls == 1 and torch.equal(result, genuine)
    _assert_genuine_on_disk(path, genuine)


def test_an_entry_without_a_digest_is_recomputed_once(stored, genuine):
    """An entry as the previous version wrote it (the genuine scores, metadata with only the key and fields) is
    refused as written without a content digest, recomputed once, and then read with no warning."""
    cache, fresh, path = stored
    old = {name: value for name, value in _metadata(path).items() if name in ("key", "fields")}
    save_file({"scores": genuine}, str(path), metadata=old)

    (result, _), messages = cache_warnings(lambda: cache.load_or_compute(fresh.fields, fresh.shape, fresh))
    assert_unusable(messages, path, "written without a content digest")
    assert fresh.calls == 1 and torch.equal(result, genuine)
    _assert_genuine_on_disk(path, genuine)
    assert torch.equal(_reads_silently(cache, fresh), genuine)
    assert fresh.calls == 1
