"""Does switching off the top-k CAN neurons collapse the model, and in two stages?

CAN (Lu, Tang, Cavallaro, arXiv 2512.00918): masking as few as 4 FFN neurons collapses LLaVA-1.5-7b and about 1200
(v1 of the paper; "a few thousand" in v2) collapse InstructBLIP-Vicuna-7b; the critical neurons sit in the
language model's down_proj. Each case measures one (model, site, image category, k) point;
the plugin prints the stage-1 / stage-2 thresholds found on the k grid and writes can-results/collapse.{json,csv}.
"""

import pytest

from harness.runner.assertions import assert_clip_drop, assert_fluent_baseline, assert_ppl_blowup

# The paper's claim, per (model, site): by this k the reference PPL is ≥ 10× the baseline and the CLIP score has
# dropped. The paper says "as few as 4 neurons" for LLaVA-1.5-7b (one summary says 5); 8 is the first point of
# the k grid that covers both readings. planted-llava has one critical down_proj neuron by construction: the
# positive control that the harness finds it and collapses at k = 1.
COLLAPSED_BY_K = {
    ("llava-1.5-7b", "lm.down_proj"): 8,
    ("instructblip-vicuna-7b", "lm.down_proj"): 4096,  # the grid point past "a few thousand"
    ("planted-llava", "lm.down_proj"): 1,
}

# Models whose unmasked captions must be fluent and on-topic.
FLUENT_BASELINE = {"synth-llava", "planted-llava", "llava-1.5-7b", "instructblip-vicuna-7b"}

FFN_SITES = ["lm.gate_proj", "lm.up_proj", "lm.down_proj", "lm.mlp_hidden"]


# tiny-instructblip is random (its captions mean nothing): it runs the InstructBLIP path offline, `-k instructblip`
@pytest.mark.collapse_grid(
    models=["synth-llava", "planted-llava", "llava-1.5-7b", "instructblip-vicuna-7b", "tiny-instructblip"],
    sites=FFN_SITES,
)
def test_collapse(collapse_curve, k):
    point = collapse_curve.measure(k)
    if k == 0 and point.model in FLUENT_BASELINE:
        assert_fluent_baseline(collapse_curve)
    bound = COLLAPSED_BY_K.get((point.model, point.site))
    if bound is not None and k >= bound:
        assert_ppl_blowup(collapse_curve, k, min_log10_ratio=1.0)
        assert_clip_drop(collapse_curve, k, max_fraction=0.9)
