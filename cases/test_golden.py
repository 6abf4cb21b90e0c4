"""Golden real-weight checks: published critical-neuron coordinates, found again by CAN and confirmed by masking.

The massive-activation literature (Sun et al. 2024; Yu et al. 2024) names the residual channels that
carry a huge constant at token 0: in LLaVA-1.5-7b (Vicuna-7b-v1.5, from Llama-2-7b) channels 1415 and 2533 of
language-model layer 1's down_proj output; in InstructBLIP-Vicuna-7b (a LLaMA-1-7b backbone) the super weight
`layers[2].mlp.down_proj[3968, 7003]`, i.e. output channel 3968 of layer 2. If CAN ranks what the papers say it
ranks, these channels are among its top 10, and switching them off alone blows up the reference PPL.

These need the real checkpoint and a CUDA GPU; elsewhere they skip, saying which of the two is missing and how
to get it.
"""

import math

import pytest
import torch

from harness.core.errors import ModelUnavailableError, UnsupportedModelError
from harness.core.metrics import log10_ppl
from harness.models.captioning import generate_captions, score_captions
from harness.models.loading import load_model_config
from harness.models.masking import NeuronMask

SITE = "lm.down_proj"
GOLDEN = {  # model: (language-model layer, down_proj output channels)
    "llava-1.5-7b": (1, (1415, 2533)),
    "instructblip-vicuna-7b": (2, (3968,)),
}


@pytest.fixture
def golden_experiment(can_session, can_settings, request):
    """The model's experiment, or a skip that says what is missing: the checkpoint, a CUDA GPU, or both."""
    model = request.param
    missing = []
    try:
        load_model_config(can_settings.model_spec(model), cache_dir=can_settings.cache_dir)
    except ModelUnavailableError as error:
        missing.append(str(error))
    if not torch.cuda.is_available():
        missing.append(
            f"{model}: golden real-weight checks need a CUDA GPU (a 7B model in float16 is ~14 GB); run "
            "`pytest cases/test_golden.py` on a GPU machine whose Hugging Face cache holds the checkpoint"
        )
    if missing:
        pytest.skip(" — and ".join(missing))
    try:
        return can_session.experiment(model)
    except UnsupportedModelError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("golden_experiment", list(GOLDEN), indirect=True)
def test_massive_activation_channels_are_found_and_critical(golden_experiment, can_settings):
    experiment = golden_experiment
    layer, channels = GOLDEN[experiment.name]
    category = experiment.probe.images.categories[0]
    site = experiment.site(SITE)
    top10 = site.neurons(experiment.ranking(SITE, category).top_k(10))
    assert {(layer, channel) for channel in channels} <= {(n.layer, n.channel) for n in top10}, (
        f"CAN's top 10 of {SITE} on {category}: {[(n.layer, n.channel) for n in top10]}"
    )
    images = experiment.probe.images.images(category)
    baseline = experiment.baseline(category)
    with NeuronMask(site, [layer * site.width + channel for channel in channels]):
        captions = generate_captions(
            experiment.loaded,
            images,
            max_new_tokens=can_settings.max_new_tokens,
            batch_size=can_settings.batch_size,
        )
    reference = score_captions(experiment.loaded, images, captions, batch_size=can_settings.batch_size)
    ratio = log10_ppl(math.fsum(reference) / len(reference)) - log10_ppl(
        math.fsum(baseline.reference_nll) / len(baseline.reference_nll)
    )
    assert ratio >= can_settings.thresholds.stage2_log10_ppl_ratio, (
        f"masking {len(channels)} channel(s) raised the reference PPL by only 10^{ratio:.2f}; "
        f"captions: {[caption.text for caption in captions[:3]]}"
    )
    experiment.loaded.assert_unmodified()
