"""A third VLM family through the same registry: LLaVA-NeXT on a tiny offline model. Its processor cuts each
image into any-resolution tiles (a different number of image tokens per image); captions, scoring, rankings and
masks go through the same code as LLaVA's."""

from __future__ import annotations

import pytest
import torch

from harness.models.captioning import teacher_forced_batch
from harness.models.masking import NeuronMask
from harness.models.prompts import encode_prompts, placeholder_token_ids

CATEGORY = "circle"


@pytest.fixture(scope="module")
def next_experiment(session):
    return session.experiment("tiny-llava-next")


def test_images_of_other_shapes_get_other_numbers_of_image_tokens(next_experiment):
    from PIL import Image

    loaded = next_experiment.loaded
    wide, square = Image.new("RGB", (96, 32), "red"), Image.new("RGB", (32, 32), "blue")
    batch = encode_prompts(loaded, [wide, square])
    (placeholder,) = placeholder_token_ids(loaded)
    counts = ((batch["input_ids"] == placeholder) & batch["attention_mask"].bool()).sum(1).tolist()
    assert counts[0] != counts[1] and min(counts) > (32 // 8) ** 2  # tiles beyond the one overview image


def test_teacher_forced_scoring_reproduces_the_generation_log_probabilities(next_experiment):
    baseline = next_experiment.baseline(CATEGORY)
    assert baseline.reference_nll == pytest.approx([c.self_nll for c in baseline.captions], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("site_name", ["lm.down_proj", "vision.fc1", "projector"])
def test_ranked_and_masked_like_llava(next_experiment, site_name):
    site = next_experiment.site(site_name)
    ranking = next_experiment.ranking(site_name, CATEGORY)
    assert ranking.scores.shape == (site.n_layers, site.width) and ranking.scores.max() > 0
    batch = teacher_forced_batch(
        next_experiment.loaded,
        next_experiment.probe.images.images(CATEGORY),
        next_experiment.baseline(CATEGORY).captions,
    )
    with torch.no_grad():
        unmasked = next_experiment.loaded.model(**batch.inputs, use_cache=False).logits
        with NeuronMask(site, ranking.top_k(8)):
            masked = next_experiment.loaded.model(**batch.inputs, use_cache=False).logits
    assert not torch.equal(masked, unmasked)
    next_experiment.loaded.assert_unmodified()
