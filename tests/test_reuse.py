"""What an evaluation computes once and reuses at every k: the unmasked model's prompt prefixes (reference scoring
forwards only the caption tokens) and the image features (for masks inside the language model). Each reuse is
checked against the computation it replaces, or against an independent single-sequence NLL."""

from __future__ import annotations

import dataclasses

import pytest

from harness.models.captioning import generate_captions, score_captions
from harness.models.image_encoding import supports_image_reuse
from harness.models.masking import mask_neurons
from harness.models.prompt_prefix import encode_prefixes, score_after_prefixes, supports_prefix_reuse
from harness.runner.experiment import TOP_K_ZERO
from tests.test_metrics import hand_nll

CATEGORY = "circle"


@pytest.fixture(scope="module")
def next_experiment(session):
    return session.experiment("tiny-llava-next")


def ragged(captions, lengths):
    return [dataclasses.replace(c, token_ids=c.token_ids[:n]) for c, n in zip(captions, lengths, strict=False)]


def test_scoring_after_a_prefix_equals_an_independent_nll_of_the_whole_sequence(experiment, loaded, images):
    """Ragged captions (one of a single token) scored after cached prefixes, against one unpadded forward each."""
    pictures = images.images(CATEGORY)[:4]
    captions = ragged(experiment.baseline(CATEGORY).captions, (12, 1, 7, 4))
    scored = score_after_prefixes(loaded, encode_prefixes(loaded, pictures, batch_size=3), captions)
    expected = [hand_nll(loaded, image, caption) for image, caption in zip(pictures, captions, strict=True)]
    assert scored == pytest.approx(expected, abs=1e-5)


def test_single_token_captions_are_scored_by_the_prefix_logits_alone(experiment, loaded, images):
    pictures = images.images(CATEGORY)[:2]
    captions = ragged(experiment.baseline(CATEGORY).captions, (1, 1))
    scored = score_after_prefixes(loaded, encode_prefixes(loaded, pictures, batch_size=2), captions)
    expected = [hand_nll(loaded, image, caption) for image, caption in zip(pictures, captions, strict=True)]
    assert scored == pytest.approx(expected, abs=1e-5)


def test_prefixes_of_any_resolution_prompts_score_like_the_full_sequences(next_experiment):
    """LLaVA-NeXT's prompts differ in length per image (left padding inside the prefix)."""
    loaded, pictures = next_experiment.loaded, next_experiment.samples(CATEGORY)
    captions = next_experiment.baseline(CATEGORY).captions
    full = score_captions(loaded, pictures, captions, batch_size=3)
    assert score_after_prefixes(loaded, encode_prefixes(loaded, pictures, 3), captions) == pytest.approx(
        full, rel=1e-4, abs=1e-5
    )


def test_misaligned_captions_are_refused(experiment, loaded, images):
    pictures = images.images(CATEGORY)[:2]
    prefixes = encode_prefixes(loaded, pictures, batch_size=2)
    with pytest.raises(ValueError, match="3 captions for 2 prompt prefixes"):
        score_after_prefixes(loaded, prefixes, experiment.baseline(CATEGORY).captions[:3])


@pytest.mark.parametrize("fixture", ["experiment", "next_experiment"])
def test_generation_from_encoded_images_equals_generation_from_pixels(request, fixture, unmodified):
    """Under a language-model mask, captions from the reused features are the captions from the pixels."""
    experiment = request.getfixturevalue(fixture)
    loaded, pictures, settings = experiment.loaded, experiment.samples(CATEGORY), experiment.settings
    site = experiment.site("lm.down_proj")
    encoded = experiment.probe.encoded_images(CATEGORY, site)
    assert encoded is not None
    with mask_neurons(site, experiment.selection("lm.down_proj", CATEGORY, 5, TOP_K_ZERO), mode="hook"):
        kwargs = dict(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
        from_pixels = generate_captions(loaded, pictures, **kwargs)
        from_features = generate_captions(loaded, pictures, **kwargs, encoded_images=encoded)
    assert [c.token_ids for c in from_features] == [c.token_ids for c in from_pixels]
    assert [c.self_nll for c in from_features] == pytest.approx([c.self_nll for c in from_pixels], abs=1e-6)


@pytest.mark.parametrize("site_name", ["vision.fc2", "projector", "lm.down_proj+vision.fc2"])
def test_masks_outside_the_language_model_re_encode_the_images(experiment, site_name):
    assert experiment.probe.encoded_images(CATEGORY, experiment.site(site_name)) is None


def test_instructblip_re_encodes_and_scores_whole_sequences(session):
    """Its generate has no pre-encoded input and its forward no KV cache: both reuses are off, by capability."""
    loaded = session.experiment("tiny-instructblip").loaded
    assert not supports_image_reuse(loaded) and not supports_prefix_reuse(loaded)


def test_prefixes_are_kept_for_one_category_at_a_time(experiment, images):
    """A full-size model's prefix is ~0.3 GB an image: a new category's replace the last one's."""
    first, second = images.categories[:2]
    experiment.probe.prompt_prefixes(first)
    experiment.probe.prompt_prefixes(second)
    assert list(experiment.probe._prefixes) == [second]
