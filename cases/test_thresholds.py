"""Where does each curve collapse — k₁ (expressive degradation) and k₂ = k* (complete collapse) — and is the
collapse a finding?

Each case is one (model, site, image category) curve: the adaptive search (bisections over k₂'s bracket, k₂, k₁)
finds the linear scan's thresholds in logarithmically many evaluations, then random-k and mean-ablation controls
are measured at k₂ and the CAN set at k₂ is broken down by site and layer. The plugin prints one table row per
curve and writes the full analyses (every evaluated point with its captions, the controls, the options) to the
report.
With `--can-baseline FILE` every curve is also a regression check against the stored thresholds and metrics
(`cases/baselines/synth.json` holds the embedded models' on CPU, float32, default options).
"""

import pytest

from harness.runner.assertions import assert_collapses_within, assert_controls_hold, assert_matches_baseline

# The CAN paper's headline: LLaVA-1.5-7b collapses with as few as 4 (one summary says 5) down_proj neurons; the
# controls must not collapse at that k for the collapse to count (README, *Science defaults*).
COLLAPSES_WITHIN = {("llava-1.5-7b", "lm.down_proj"): 8, ("instructblip-vicuna-7b", "lm.down_proj"): 4096}


# Each site alone, and both ranked as one pool: where the pooled top-k₂ lands is the localisation finding.
@pytest.mark.collapse_search(
    models=["synth-llava", "planted-llava", "llava-1.5-7b", "instructblip-vicuna-7b"],
    sites=["lm.down_proj", "lm.gate_proj", "lm.down_proj+lm.gate_proj"],
)
def test_two_stage_thresholds(collapse_analysis, can_baselines):
    bound = COLLAPSES_WITHIN.get((collapse_analysis.model, collapse_analysis.site))
    if bound is not None:
        assert_collapses_within(collapse_analysis, bound)
        assert_controls_hold(collapse_analysis)
    assert_matches_baseline(collapse_analysis, can_baselines)
