"""The training script: same seed → same weights and figures; another seed → different weights."""

from __future__ import annotations

import json

import pytest

from training import synth_training

# A few steps on a few images: enough to run every stage of the script (train, plant, CLIP, measure, model card).
QUICK = [
    "--train-images", "48", "--heldout-images", "8", "--llava-steps", "3", "--planted-steps", "2",
    "--clip-steps", "3", "--llava-batch", "16", "--clip-batch", "16", "--threads", "1",
]  # fmt: skip
WEIGHT_FILES = (
    "synth-llava/model.safetensors",
    "planted-llava/model.safetensors",
    "synth-clip/open_clip_model.safetensors",
)


def train(folder, *extra: str) -> dict:
    assert synth_training.main([*QUICK, *extra, "--out", str(folder)]) == 0
    record = json.loads((folder / "quality.json").read_text())
    record.pop("training_seconds")
    return record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-training")
    return {
        name: (root / name, train(root / name, *extra))
        for name, extra in {"first": (), "again": (), "seed1": ("--seed", "1")}.items()
    }


def test_same_seed_gives_identical_weights_and_figures(runs):
    (first, first_record), (again, again_record) = runs["first"], runs["again"]
    for name in WEIGHT_FILES:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert first_record == again_record


def test_another_seed_gives_other_weights(runs):
    first, other = runs["first"][0], runs["seed1"][0]
    for name in WEIGHT_FILES:
        assert (first / name).read_bytes() != (other / name).read_bytes(), name


def test_model_card_records_recipe_plant_and_quality(runs):
    folder, record = runs["first"]
    assert record["recipe"]["llava_steps"] == 3 and record["recipe"]["seed"] == 0
    assert set(record["quality_heldout"]) == {"synth-llava", "planted-llava", "synth-clip"}
    assert record["planted"]["layer"] == 0 and 0 <= record["planted"]["channel"] < 128
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"channel {record['planted']['channel']}" in card
    assert "retrieval top-1" in card
