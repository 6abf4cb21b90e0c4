"""The InstructBLIP path end to end on a tiny offline model: query placeholders, captions, teacher-forced scoring,
gradients into every component (language model, vision tower, Q-Former, projector), masks that act and undo."""

from __future__ import annotations

import pytest
import torch

from harness.models.captioning import teacher_forced_batch
from harness.models.masking import NeuronMask
from harness.models.prompts import encode_prompts, placeholder_token_ids
from harness.models.sites import sites_of

CATEGORY = "circle"


@pytest.fixture(scope="module")
def blip(session):
    return session.experiment("tiny-instructblip")


def test_the_processor_puts_one_placeholder_per_query_before_the_instruction(blip):
    """InstructBLIP's query features replace `num_query_tokens` placeholders in front of the (unprompted)
    instruction; the harness finds that token id in the model config, since the processor does not name it."""
    batch = encode_prompts(blip.loaded, blip.probe.images.images(CATEGORY)[:2])
    queries = blip.loaded.model.config.num_query_tokens
    (placeholder,) = placeholder_token_ids(blip.loaded)
    assert placeholder == blip.loaded.model.config.image_token_id
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        real = ids[mask.bool()].tolist()
        assert real[:queries] == [placeholder] * queries and placeholder not in real[queries:]
    assert {"qformer_input_ids", "qformer_attention_mask", "pixel_values"} <= set(batch)


def test_teacher_forced_scoring_reproduces_the_generation_log_probabilities(blip):
    """The captioning path is aligned: scoring the unmasked model's own captions teacher-forced gives the mean
    NLL the generation logits gave, caption by caption — a token offset anywhere would break this."""
    baseline = blip.baseline(CATEGORY)
    assert all(placeholder_token_ids(blip.loaded)[0] not in caption.token_ids for caption in baseline.captions)
    self_nll = [caption.self_nll for caption in baseline.captions]
    assert baseline.reference_nll == pytest.approx(self_nll, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("site_name", ["lm.down_proj", "lm.o_proj", "vision.fc1", "qformer.fc1", "projector"])
def test_every_component_is_ranked_and_masked(blip, site_name):
    """CAN reaches each component through the teacher-forced backward; zeroing its top neurons changes the
    logits, and the model is restored bit for bit."""
    site = blip.site(site_name)
    scores = blip.ranking(site_name, CATEGORY).scores
    assert scores.shape == (site.n_layers, site.width)
    assert torch.isfinite(scores).all() and scores.max() > 0
    captions = blip.baseline(CATEGORY).captions
    batch = teacher_forced_batch(blip.loaded, blip.probe.images.images(CATEGORY), captions)
    with torch.no_grad():
        unmasked = blip.loaded.model(**batch.inputs, use_cache=False).logits
        with NeuronMask(site, blip.ranking(site_name, CATEGORY).top_k(8)):
            masked = blip.loaded.model(**batch.inputs, use_cache=False).logits
    assert not torch.equal(masked, unmasked)
    blip.loaded.assert_unmodified()


def test_every_site_of_the_family_resolves_on_the_tiny_model(blip):
    config = blip.loaded.model.config
    expected = {
        "lm.down_proj": (config.text_config.num_hidden_layers, config.text_config.hidden_size),
        "vision.fc1": (config.vision_config.num_hidden_layers, config.vision_config.intermediate_size),
        "qformer.fc1": (config.qformer_config.num_hidden_layers, config.qformer_config.intermediate_size),
        "qformer.fc2": (config.qformer_config.num_hidden_layers, config.qformer_config.hidden_size),
        "projector": (1, config.text_config.hidden_size),
    }
    assert set(expected) <= set(sites_of(blip.loaded.family))
    for name, shape in expected.items():
        site = blip.site(name)
        assert (site.n_layers, site.width) == shape, name
