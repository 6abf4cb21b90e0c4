"""Where do the critical neurons live: the language model, or the vision side?

The CAN paper's central comparison: switching off a handful of language-model FFN neurons collapses LLaVA-1.5-7b,
while the vision tower's MLP, InstructBLIP's Q-Former and the multimodal projector carry no such neurons. Each
case is one (model, site, category) curve searched as in test_thresholds.py; `-k vision` selects the vision-tower
sites. A site a model's family lacks (LLaVA has no Q-Former) is skipped, saying so.
"""

import pytest

from harness.runner.assertions import assert_matches_baseline, assert_no_collapse_within

VISION_SIDE = ("vision.fc1", "vision.fc2", "qformer.fc1", "qformer.fc2", "projector")  # no Q-Former in LLaVA
# LLaVA-1.5-7b: the language model collapses within 8 down_proj neurons (test_thresholds.py); the vision side, with
# as many of its own top-ranked neurons switched off, must not.
NO_COLLAPSE_WITHIN = {"llava-1.5-7b": 8}


@pytest.mark.collapse_search(
    models=["synth-llava", "llava-1.5-7b", "instructblip-vicuna-7b"],
    sites=["lm.o_proj", *VISION_SIDE, "lm.down_proj+vision.fc2+projector"],
)
def test_language_versus_vision_components(collapse_analysis, can_baselines):
    bound = NO_COLLAPSE_WITHIN.get(collapse_analysis.model)
    if bound is not None and collapse_analysis.site in VISION_SIDE:
        assert_no_collapse_within(collapse_analysis, bound)
    assert_matches_baseline(collapse_analysis, can_baselines)
