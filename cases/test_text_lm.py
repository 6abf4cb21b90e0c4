"""Text-only LLMs in the PCICN setting ("The Achilles' Heel of LLMs", Qin et al.): PPL on a given text.

PCICN ranks by noise sensitivity (Gaussian noise σ = 5 on the input embeddings, K = 100 passes) and collapses most
of 21 models (log10 PPL ratio ≥ 1) with 3–5 down_proj neurons: Qwen2.5-0.5B and Gemma-7B with 3. Each case is
one (model, site, ranking, text, k) point on the same grid, summary and reports as the vision-language cases;
the category is the text (`--can-texts`, default: the built-in paragraph). `-k tiny` runs the tiny random models
offline; `-k qwen2.5` etc. need the checkpoint in the local HF cache (and, in practice, a GPU).
"""

import pytest

from harness.runner.assertions import assert_ppl_blowup

# PCICN: 3 neurons; 4 is the first point of the k grid past it.
COLLAPSED_BY_K = {("qwen2.5-0.5b", "lm.down_proj", "pcicn"): 4, ("gemma-7b", "lm.down_proj", "pcicn"): 4}


@pytest.mark.collapse_grid(
    models=["tiny-llama", "tiny-qwen2", "qwen2.5-0.5b", "gemma-7b", "llama-2-7b"],
    sites=["lm.down_proj", "lm.gate_proj"],
    methods=["pcicn", "can"],
)
def test_text_collapse(collapse_curve, can_method, k):
    point = collapse_curve.measure(k)
    bound = COLLAPSED_BY_K.get((point.model, point.site, can_method))
    if bound is not None and k >= bound:
        assert_ppl_blowup(collapse_curve, k, min_log10_ratio=1.0)
