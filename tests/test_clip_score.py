"""CLIP scores against hand-computed cosines, the chance level, and how unavailable CLIP models are reported."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from harness.core.errors import ModelUnavailableError, UnknownNameError
from harness.models.clip_score import ClipScorer, check_clip_name, clip_score_matrix, clip_scores
from harness.models.registry import ClipSpec, get_model_spec

TEXTS = ["a red circle", "a blue square on a green background", "triangle", "yellow yellow yellow"]


def hand_score(clip: ClipScorer, image, text: str) -> float:
    """100·max(cos, 0) from one image and one text encoded on their own, cosine in float64 with explicit norms."""
    with torch.no_grad():
        image_embedding = clip.model.encode_image(clip.preprocess(image)[None])[0].double()
        text_embedding = clip.model.encode_text(clip.tokenizer([text]))[0].double()
    cosine = float(image_embedding @ text_embedding) / float(image_embedding.norm() * text_embedding.norm())
    return 100.0 * max(cosine, 0.0)


@pytest.fixture(scope="module")
def pictures(images):
    return images.images("circle")


@pytest.fixture(scope="module")
def hand_matrix(experiment, pictures):
    """[images, TEXTS] hand-computed scores."""
    rows = [[hand_score(experiment.probe.clip, image, text) for text in TEXTS] for image in pictures]
    return torch.tensor(rows, dtype=torch.float64)


def test_hand_matrix_exercises_the_clamp(hand_matrix):
    """The fixture pairs include both positive and clamped (negative-cosine) scores."""
    assert (hand_matrix > 0).any()
    assert (hand_matrix == 0).any()


def test_clip_scores_match_hand_cosine(experiment, pictures, hand_matrix):
    """Row-aligned scores equal 100·max(cos, 0) of separately encoded image and text."""
    clip = experiment.probe.clip
    scores = clip_scores(clip.image_features(pictures), clip.text_features(TEXTS))
    assert torch.allclose(scores.double(), hand_matrix.diagonal(), atol=1e-4)


def test_clip_score_matrix_matches_hand_cosine(experiment, pictures, hand_matrix):
    """Every (image, text) pairing equals the hand-computed score."""
    clip = experiment.probe.clip
    matrix = clip_score_matrix(clip.image_features(pictures), clip.text_features(TEXTS))
    assert matrix.shape == (len(pictures), len(TEXTS))
    assert torch.allclose(matrix.double(), hand_matrix, atol=1e-4)


def test_features_do_not_depend_on_batching(experiment, pictures):
    """Image and text features are the same in one batch or in batches of one."""
    clip = experiment.probe.clip
    assert torch.allclose(clip.image_features(pictures), clip.image_features(pictures, batch_size=1), atol=1e-6)
    assert torch.allclose(clip.text_features(TEXTS), clip.text_features(TEXTS, batch_size=1), atol=1e-6)


def test_negative_cosines_clamp_to_zero():
    """Hand-made unit vectors: cos -1, -0.6 and 0 score 0; cos 1 and 0.96 score 100 and 96."""
    image_features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])
    text_features = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.8, -0.6]])
    assert torch.allclose(clip_scores(image_features, text_features), torch.tensor([0.0, 100.0, 96.0, 0.0]))
    expected = torch.tensor(
        [
            [0.0, 0.0, 80.0, 80.0],
            [0.0, 100.0, 60.0, 0.0],
            [0.0, 80.0, 96.0, 0.0],
            [0.0, 80.0, 96.0, 0.0],
        ]
    )
    assert torch.allclose(clip_score_matrix(image_features, text_features), expected, atol=1e-5)


def test_baseline_clip_and_chance_match_hand_scores(experiment, images):
    """Baseline CLIP pairs each image with its own caption; chance pairs the same captions with every image of the
    other categories."""
    assert sorted(images.categories) == ["circle", "cross", "square", "triangle"]
    pictures = images.images("circle")
    baseline = experiment.baseline("circle")
    own = [
        hand_score(experiment.probe.clip, image, c.text)
        for image, c in zip(pictures, baseline.captions, strict=True)
    ]
    assert baseline.values["clip"] == pytest.approx(own, abs=1e-4)
    others = [image for category in ("cross", "square", "triangle") for image in images.images(category)]
    assert len(others) == 12
    chance = [hand_score(experiment.probe.clip, image, c.text) for image in others for c in baseline.captions]
    assert baseline.chance["clip"] == pytest.approx(sum(chance) / len(chance), abs=1e-4)


def test_masked_point_clip_and_chance_match_hand_scores(experiment, images):
    """At k > 0 the point's CLIP pairs each image with its masked caption, and its chance scores those masked
    captions against all 12 images of the other categories; the baseline chance stays the k = 0 chance."""
    point = experiment.measure("lm.down_proj", "circle", 4)
    own = [
        hand_score(experiment.probe.clip, image, text)
        for image, text in zip(images.images("circle"), point.captions, strict=True)
    ]
    assert point.metrics["clip"] == pytest.approx(sum(own) / len(own), abs=1e-4)
    others = [image for category in ("cross", "square", "triangle") for image in images.images(category)]
    chance = [hand_score(experiment.probe.clip, image, text) for image in others for text in point.captions]
    assert point.chance["clip"] == pytest.approx(sum(chance) / len(chance), abs=1e-4)
    assert min(chance) < max(chance)  # the hand scores are not all clamped to zero
    assert len(others) == 12
    assert point.baseline_chance == experiment.baseline("circle").chance


def test_check_clip_name_accepts_known_names_and_own_weights(tmp_path):
    """A known model with a known tag or an existing weight file passes, and so do local-dir: folders and
    embedded CLIPs (they carry their own weights); nothing is loaded or looked up in a cache."""
    weights = tmp_path / "my-vit.pt"
    weights.write_bytes(b"not read")
    for spec in (
        ClipSpec("ViT-B-32", "openai"),
        ClipSpec("ViT-B-32", "laion2b_s34b_b79k"),
        ClipSpec("ViT-B-32", str(weights)),
        ClipSpec(f"local-dir:{tmp_path / 'nowhere'}", None),
        get_model_spec("tiny-llava").clip,
    ):
        assert check_clip_name(spec) is None, spec


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (ClipSpec("ViT-B-32", None), "None"),
        (ClipSpec("ViT-B-32", "no-such-tag"), "'no-such-tag'"),
        (ClipSpec("ViT-B-32", "/no/such/weights.pt"), "'/no/such/weights.pt'"),
    ],
    ids=["no-tag", "unknown-tag", "missing-file"],
)
def test_check_clip_name_needs_a_pretrained_tag_it_knows(spec, named):
    """A named CLIP without pretrained weights would be random: no tag, an unknown tag or a missing weight file
    raises UnknownNameError naming the model and the value and listing the model's real tags."""
    with pytest.raises(UnknownNameError) as error:
        check_clip_name(spec)
    message = str(error.value)
    assert "ViT-B-32" in message
    assert named in message
    assert "openai" in error.value.valid
    assert "laion2b_s34b_b79k" in message


def test_check_clip_name_rejects_an_unknown_model():
    """An open_clip model that does not exist is named, with every model open_clip knows listed."""
    with pytest.raises(UnknownNameError) as error:
        check_clip_name(ClipSpec("No-Such-CLIP", "openai"))
    assert error.value.name == "No-Such-CLIP"
    assert {"ViT-B-32", "ViT-L-14"} <= set(error.value.valid)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No Hugging Face cache and no ~/.cache/clip: nothing pretrained is available on this machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_uncached_pretrained_weights_are_unavailable(empty_caches):
    """Weights that are not cached (and may not download) raise ModelUnavailableError saying how to get them."""
    with pytest.raises(ModelUnavailableError) as error:
        ClipScorer(ClipSpec("ViT-B-32", "openai"), cache_dir=empty_caches, device=torch.device("cpu"))
    message = str(error.value)
    assert "ViT-B-32" in message
    assert "openai" in message
    assert "--can-allow-download" in message
    assert "local-dir:" in message


def test_unknown_pretrained_tag_lists_valid_tags(empty_caches):
    """An unknown tag names itself and lists the model's real tags."""
    with pytest.raises(UnknownNameError) as error:
        ClipScorer(ClipSpec("ViT-B-32", "no-such-tag"), cache_dir=empty_caches, device=torch.device("cpu"))
    assert "no-such-tag" in str(error.value)
    assert "openai" in error.value.valid
    assert "openai" in str(error.value)


def test_unknown_model_name_is_rejected(empty_caches):
    """An open_clip model name that does not exist raises UnknownNameError naming it."""
    with pytest.raises(UnknownNameError) as error:
        ClipScorer(ClipSpec("No-Such-CLIP", "openai"), cache_dir=empty_caches, device=torch.device("cpu"))
    assert "No-Such-CLIP" in str(error.value)
    assert "ViT-B-32" in error.value.valid


def test_local_folder_without_config_is_unavailable(tmp_path):
    """A local-dir: folder without open_clip_config.json raises ModelUnavailableError naming folder and file."""
    folder = tmp_path / "my-clip"
    folder.mkdir()
    with pytest.raises(ModelUnavailableError) as error:
        ClipScorer(ClipSpec(f"local-dir:{folder}", None), cache_dir=tmp_path, device=torch.device("cpu"))
    assert str(folder) in str(error.value)
    assert "open_clip_config.json" in str(error.value)
