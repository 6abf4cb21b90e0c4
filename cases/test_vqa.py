"""Does question answering collapse where captioning does? The vqa probe beside the captioning one, on the same
model, site and images.

smol-llava-qa is smol-llava with its projector fine-tuned to answer the vqa probe's questions about the synthetic
world (harness/zoo/smol_llava_qa/MODEL_CARD.md); SmolLM2-135M-Instruct is frozen inside, bit for bit. Each case is
one (probe, image category) curve on `lm.down_proj`, searched as in test_thresholds.py, so the threshold table
shows the answers' k₁/k₂ beside the captions'. The vqa probe's stage rule: stage 1 when the answers' reference
PPL doubles or their accuracy falls to 90 % of its baseline; stage 2 when the reference PPL rises tenfold and the
accuracy is at or below chance (guessing among each question's answers: 27.8 %).
"""

import pytest

from harness.runner.assertions import assert_collapses_within, assert_fluent_baseline

MODEL, SITE = "smol-llava-qa", "lm.down_proj"


@pytest.mark.collapse_search(models=[MODEL], sites=[SITE], probe="vqa")
def test_answers_collapse(collapse_analysis):
    assert_fluent_baseline(collapse_analysis)
    assert_collapses_within(collapse_analysis, 4)


@pytest.mark.collapse_search(models=[MODEL], sites=[SITE])
def test_captions_collapse(collapse_analysis):
    assert_fluent_baseline(collapse_analysis)
    assert_collapses_within(collapse_analysis, 4)
