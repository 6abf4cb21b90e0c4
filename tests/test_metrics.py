"""Perplexity against an independent NLL computation, PPL formatting, degeneracy, stages and the k grid."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.core.errors import MetricError
from harness.core.metrics import format_ppl, is_degenerate, log10_ppl, require_finite
from harness.models.captioning import Caption, score_captions
from harness.runner.settings import k_grid
from harness.science.stages import Criterion, StageThresholds, first_k_at_stage, is_monotone

CATEGORY = "circle"
EOS = 2


def hand_nll(loaded, image, caption: Caption) -> float:
    """Mean NLL (nats) of the caption tokens: one unpadded forward of prompt + caption, log-softmax in float64."""
    encoded = loaded.processor(images=[image], text=[loaded.spec.prompt], return_tensors="pt")
    prompt = encoded["input_ids"][0]
    tokens = torch.tensor(caption.token_ids, dtype=prompt.dtype)
    input_ids = torch.cat([prompt, tokens])[None]
    with torch.no_grad():
        logits = loaded.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=encoded["pixel_values"].to(loaded.dtype),
        ).logits[0]
    logprobs = logits.double().log_softmax(-1)
    start = len(prompt)
    return -math.fsum(float(logprobs[start - 1 + i, t]) for i, t in enumerate(caption.token_ids)) / len(tokens)


@pytest.fixture(scope="module")
def circle(experiment, images):
    """(images, baseline captions, hand NLL per caption) of one category."""
    pictures = images.images(CATEGORY)
    captions = experiment.baseline(CATEGORY).captions
    nlls = [hand_nll(experiment.loaded, image, c) for image, c in zip(pictures, captions, strict=True)]
    return pictures, captions, nlls


def test_reference_nll_matches_hand_computation(loaded, circle):
    """score_captions (batched, teacher-forced) gives each caption's own mean token NLL."""
    pictures, captions, nlls = circle
    scored = score_captions(loaded, pictures, captions, batch_size=4)
    assert scored == pytest.approx(nlls, abs=1e-5)


def test_reference_nll_of_ragged_captions_matches_hand_computation(loaded, circle):
    """Captions of different lengths (right padding in the batch) are each scored on their own tokens only."""
    pictures, captions, _ = circle
    ragged = [
        dataclasses.replace(c, token_ids=c.token_ids[:n]) for c, n in zip(captions, (12, 1, 7, 4), strict=True)
    ]
    expected = [hand_nll(loaded, image, c) for image, c in zip(pictures, ragged, strict=True)]
    assert score_captions(loaded, pictures, ragged, batch_size=4) == pytest.approx(expected, abs=1e-5)


def test_self_nll_from_generation_matches_hand_computation(circle):
    """The NLL recorded during generation (from the generation logits) is the caption's teacher-forced NLL."""
    _, captions, nlls = circle
    assert [c.self_nll for c in captions] == pytest.approx(nlls, abs=1e-4)


def test_baseline_point_perplexity_is_exp_of_mean_nll(experiment, circle):
    """log10 PPL at k = 0 is log10(exp(mean over captions of the hand NLL))."""
    _, _, nlls = circle
    point = experiment.measure("lm.down_proj", CATEGORY, 0)
    expected = math.log10(math.exp(sum(nlls) / len(nlls)))
    assert point.metrics["log10_ppl"] == pytest.approx(expected, abs=1e-6)
    assert point.baselines["log10_ppl"] == pytest.approx(expected, abs=1e-6)
    assert point.log10_ppl_ratio == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("log10_value", "text"),
    [(0.0, "1"), (math.log10(2.71828), "2.72"), (math.log10(12.3456), "12.3"), (2.5, "316")],
)
def test_format_ppl_small_values(log10_value, text):
    """Small perplexities are shown as plain numbers with 3 significant digits."""
    assert format_ppl(log10_value) == text


@pytest.mark.parametrize(
    ("log10_value", "text"),
    [(4.0, "1.00e4"), (21.796, "6.25e21"), (1000.0, "1.00e1000"), (1e6, "1.00e1000000")],
)
def test_format_ppl_large_values(log10_value, text):
    """Large perplexities are shown as mantissa e exponent, even far beyond float range (no OverflowError)."""
    assert format_ppl(log10_value) == text


@pytest.mark.parametrize(("log10_value", "text"), [(5.9999, "1.00e6"), (21.9999, "1.00e22")])
def test_format_ppl_mantissa_never_rounds_to_ten(log10_value, text):
    """A mantissa that rounds up to 10 carries into the exponent instead of printing '10.00eN'."""
    assert format_ppl(log10_value) == text


@settings(max_examples=200, deadline=None)
@given(st.floats(4.0, 5000.0))
def test_format_ppl_large_form_is_normalised_and_accurate(log10_value):
    """Above 10^4: 'd.dde<n>' with 1 ≤ d.dd < 10, and d.dd·10^n is 10^x to 2 decimals of the mantissa."""
    match = re.fullmatch(r"(\d+\.\d\d)e(\d+)", format_ppl(log10_value))
    assert match, format_ppl(log10_value)
    mantissa, exponent = float(match[1]), int(match[2])
    assert 1.0 <= mantissa < 10.0
    assert abs(math.log10(mantissa) + exponent - log10_value) <= math.log10(1.005)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 4.0, exclude_max=True))
def test_format_ppl_small_form_is_accurate(log10_value):
    """Below 10^4 the text parses back to 10^x within 3-significant-digit rounding."""
    assert float(format_ppl(log10_value)) == pytest.approx(10**log10_value, rel=5e-3)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_format_ppl_non_finite(value):
    """NaN and ±inf are shown as such, not raised on."""
    assert format_ppl(value) == str(value)


@pytest.mark.parametrize("nll", [0.0, 1e-3, 1.0, 46.0, 700.0])
def test_log10_ppl_is_log10_of_exp(nll):
    """log10_ppl(n) = log10(e^n) where e^n is representable."""
    assert log10_ppl(nll) == pytest.approx(math.log10(math.exp(nll)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("nll", [710.0, 5000.0, 1e6])
def test_log10_ppl_beyond_float_range(nll):
    """log10_ppl(n) = n·log10(e) also where e^n overflows."""
    assert log10_ppl(nll) == pytest.approx(nll * math.log10(math.e), rel=1e-12)


@pytest.mark.parametrize(
    ("token_ids", "text", "expected"),
    [
        ((), "", True),
        ((5, 6), "", True),
        ((5, 6), "  \n\t", True),
        ((5, 5), "red red", True),
        ((5, 5, 5, 5), "red red red red", True),
        ((5,), "red", False),
        ((5, 6), "red blue", False),
        ((5, 5, 6), "red red blue", False),
    ],
)
def test_is_degenerate(token_ids, text, expected):
    """Empty/whitespace text, or one token repeated at least twice, is degenerate; anything else is not."""
    assert is_degenerate(token_ids, text) is expected


@pytest.mark.parametrize(
    ("token_ids", "ended", "text", "expected"),
    [
        ((5, 5, 5, EOS), True, "red red red", True),
        ((5, 6, EOS), True, "red blue", False),
        ((5, EOS), True, "red", False),
        ((EOS,), True, "", True),
        ((5, 5, 5), False, "red red red", True),
        ((5, 6, 5), False, "red blue red", False),
    ],
)
def test_caption_degenerate_ignores_final_eos(token_ids, ended, text, expected):
    """The EOS that ends a caption is not content: (5, 5, 5, EOS) repeats one token, (5, EOS) is one word."""
    caption = Caption(token_ids=token_ids, ended=ended, text=text, self_nll=1.0)
    assert caption.degenerate is expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_require_finite_names_the_metric(value):
    """A non-finite metric raises MetricError naming the metric and the value."""
    with pytest.raises(MetricError, match=r"reference NLL of run 7 is (nan|inf|-inf)"):
        require_finite(value, "reference NLL of run 7")


@pytest.mark.parametrize("value", [0.0, -3.5, 1e300])
def test_require_finite_passes_finite_values(value):
    """Finite values are returned unchanged."""
    assert require_finite(value, "x") == value


BASE = {"k": 4, "log10_ppl_ratio": 0.0, "clip": 30.0, "clip_baseline": 30.0, "clip_chance": 10.0}
VLM_CRITERION = ("log10_ppl", "clip", "degenerate_rate")
BASELINE_LOG10_PPL = 0.25


def stage_of(
    *,
    k: int,
    log10_ppl_ratio: float,
    clip: float | None,
    clip_baseline: float | None,
    clip_chance: float | None,
    degenerate_rate: float,
    thresholds: StageThresholds,
) -> int:
    """The stage of one point by the criterion a VLM's points are classified with (PPL, CLIP, degenerate rate),
    or, where there is no CLIP score, by the PPL and the degenerate rate alone."""
    metrics = VLM_CRITERION if clip is not None else ("log10_ppl", "degenerate_rate")
    values = {"log10_ppl": BASELINE_LOG10_PPL + log10_ppl_ratio, "clip": clip, "degenerate_rate": degenerate_rate}
    baselines = {"log10_ppl": BASELINE_LOG10_PPL, "clip": clip_baseline, "degenerate_rate": 0.0}
    return Criterion(metrics, thresholds).stage(k, values, baselines, {"clip": clip_chance})


@pytest.mark.parametrize(
    ("changes", "stage"),
    [
        ({}, 0),
        ({"k": 0, "log10_ppl_ratio": 5.0, "clip": 0.0, "degenerate_rate": 1.0}, 0),
        ({"log10_ppl_ratio": math.log10(2.0)}, 1),
        ({"log10_ppl_ratio": 0.30}, 0),
        ({"clip": 27.0}, 1),
        ({"clip": 27.01}, 0),
        ({"clip": 0.0, "clip_baseline": 0.0}, 0),
        ({"clip": 0.0, "clip_baseline": 0.0, "clip_chance": None}, 0),
        ({"log10_ppl_ratio": 1.0, "clip": 10.0}, 2),
        ({"log10_ppl_ratio": 1.0, "clip": 20.0, "degenerate_rate": 0.5}, 2),
        ({"log10_ppl_ratio": 1.0, "clip": 20.0, "degenerate_rate": 0.49}, 1),
        ({"log10_ppl_ratio": 0.99, "clip": 0.0, "degenerate_rate": 1.0}, 1),
        ({"log10_ppl_ratio": 0.0, "clip": 0.0, "degenerate_rate": 1.0}, 1),
        ({"log10_ppl_ratio": 3.0, "clip": 0.0, "clip_chance": None}, 1),
        ({"log10_ppl_ratio": 3.0, "clip": 0.0, "clip_chance": None, "degenerate_rate": 0.5}, 2),
        ({"log10_ppl_ratio": 3.0, "clip": 29.0, "clip_chance": None, "degenerate_rate": 0.75}, 2),
        # no CLIP at all (a text model's "ppl+degenerate" criterion): PPL and degenerate outputs decide
        ({"clip": None, "clip_baseline": None, "clip_chance": None}, 0),
        ({"clip": None, "clip_baseline": None, "clip_chance": None, "log10_ppl_ratio": math.log10(2.0)}, 1),
        ({"clip": None, "clip_baseline": None, "clip_chance": None, "log10_ppl_ratio": 3.0}, 1),
        ({"clip": None, "clip_baseline": None, "clip_chance": None, "degenerate_rate": 1.0}, 0),
        (
            {
                "clip": None,
                "clip_baseline": None,
                "clip_chance": None,
                "log10_ppl_ratio": 1.0,
                "degenerate_rate": 0.5,
            },
            2,
        ),
    ],
)
def test_classify_stage(changes, stage):
    """Default thresholds: stage 1 at PPL ×2 or CLIP ≤ 0.9·baseline; stage 2 needs PPL ×10 and (CLIP ≤ chance
    or ≥ 50 % degenerate); k = 0 is always stage 0; a zero CLIP baseline never triggers the CLIP clause."""
    arguments = {**BASE, "degenerate_rate": 0.0, **changes}
    assert stage_of(**arguments, thresholds=StageThresholds()) == stage


def test_classify_stage_uses_given_thresholds():
    """Thresholds are read from the argument, not hard-wired."""
    strict = StageThresholds(stage1_ppl_ratio=1.5, stage2_log10_ppl_ratio=0.5, stage2_degenerate_rate=0.25)
    arguments = {**BASE, "clip": 29.0, "degenerate_rate": 0.25}
    assert stage_of(**{**arguments, "log10_ppl_ratio": 0.2}, thresholds=strict) == 1
    assert stage_of(**{**arguments, "log10_ppl_ratio": 0.2}, thresholds=StageThresholds()) == 0
    assert stage_of(**{**arguments, "log10_ppl_ratio": 0.5}, thresholds=strict) == 2
    assert stage_of(**{**arguments, "log10_ppl_ratio": 0.5}, thresholds=StageThresholds()) == 1


def test_pcicns_criterion_reads_the_ppl_alone():
    """A text model's default criterion (PCICN's): stage 2 at log10(PPL/PPL₀) ≥ 1, whatever else was measured,
    and nothing else need be measured."""
    criterion = Criterion(("log10_ppl",), StageThresholds())
    assert criterion.stage(3, {"log10_ppl": 2.0}, {"log10_ppl": 1.0}, {}) == 2
    assert criterion.stage(3, {"log10_ppl": 1.99, "degenerate_rate": 1.0}, {"log10_ppl": 1.0}, {}) == 1


def test_a_criterion_refuses_a_metric_that_was_not_measured():
    criterion = Criterion(("log10_ppl", "degenerate_rate"), StageThresholds())
    with pytest.raises(ValueError, match="reads degenerate_rate, but it was not measured"):
        criterion.stage(3, {"log10_ppl": 2.0, "degenerate_rate": None}, {"log10_ppl": 1.0}, {})


CURVE = [(0, 0), (1, 0), (2, 1), (4, 1), (8, 2), (16, 2)]


@pytest.mark.parametrize(("stage", "k"), [(0, 0), (1, 2), (2, 8), (3, None)])
def test_first_k_at_stage(stage, k):
    """The smallest k whose stage is at least the asked one, whatever order the points come in."""
    assert first_k_at_stage(CURVE, stage) == k
    assert first_k_at_stage(list(reversed(CURVE)), stage) == k


def test_first_k_at_stage_counts_a_later_recovery():
    """A stage reached once counts even if a larger k falls back."""
    assert first_k_at_stage([(0, 0), (4, 0), (1, 2), (2, 1)], 2) == 1
    assert first_k_at_stage([], 1) is None


@pytest.mark.parametrize(
    ("points", "monotone"),
    [
        (CURVE, True),
        (list(reversed(CURVE)), True),
        ([(4, 2), (0, 0), (2, 1)], True),
        ([(0, 1), (1, 1), (2, 1)], True),
        ([], True),
        ([(0, 0), (1, 2), (2, 1)], False),
        ([(2, 0), (0, 0), (1, 1)], False),
    ],
)
def test_is_monotone(points, monotone):
    """Monotone means the stage never falls as k grows, whatever order the points are given in."""
    assert is_monotone(points) is monotone


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stage1_ppl_ratio", 1.0),
        ("stage1_ppl_ratio", 0.5),
        ("stage1_clip_fraction", 0.0),
        ("stage1_clip_fraction", 1.1),
        ("stage2_log10_ppl_ratio", 0.0),
        ("stage2_log10_ppl_ratio", -1.0),
        ("stage2_degenerate_rate", 0.0),
        ("stage2_degenerate_rate", 1.5),
    ],
)
def test_stage_thresholds_reject_invalid_values(field, value):
    """Each threshold outside its valid range raises ValueError naming the value."""
    with pytest.raises(ValueError, match=re.escape(str(value))):
        StageThresholds(**{field: value})


def test_stage_thresholds_accept_closed_bounds():
    """CLIP fraction and degenerate rate may be exactly 1."""
    thresholds = StageThresholds(stage1_clip_fraction=1.0, stage2_degenerate_rate=1.0)
    assert thresholds.as_dict()["stage1_clip_fraction"] == 1.0


@pytest.mark.parametrize(
    ("size", "k_max", "grid"),
    [
        (128, 8192, [0, 1, 2, 4, 8, 16, 32, 64, 128]),
        (100, 8192, [0, 1, 2, 4, 8, 16, 32, 64, 100]),
        (128, 10, [0, 1, 2, 4, 8, 10]),
        (128, 16, [0, 1, 2, 4, 8, 16]),
        (1, 8192, [0, 1]),
        (3, 8192, [0, 1, 2, 3]),
    ],
)
def test_k_grid_examples(size, k_max, grid):
    """0, then powers of 2, then min(k_max, size) when it is not itself a power of 2."""
    assert k_grid(size, k_max) == grid


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.floats(1.1, 4.0))
def test_k_grid_properties(size, k_max, factor):
    """Strictly increasing from 0 then 1, ends at min(k_max, size), grows by about `factor` per step."""
    grid = k_grid(size, k_max, factor)
    limit = min(size, k_max)
    assert grid[:2] == [0, 1]
    assert grid[-1] == limit
    assert all(a < b for a, b in itertools.pairwise(grid))
    assert all(0 <= k <= limit for k in grid)
    assert all(b <= (a + 0.5) * factor + 0.5 for a, b in itertools.pairwise(grid[1:]))
    assert len(grid) <= math.floor(math.log(limit + 0.5) / math.log(factor)) + 3
