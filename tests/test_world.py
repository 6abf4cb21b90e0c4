"""The synthetic world: captions follow the grammar and parse back, splits are reproducible and disjoint."""

from __future__ import annotations

import pytest

from harness.data import world


def test_every_scene_caption_parses_back_to_its_attributes():
    scenes = world.all_scenes()
    assert len(scenes) == len(world.CATEGORIES) * 4 * 2 * 3 * 2
    assert len({scene.caption for scene in scenes}) == len(scenes)  # one caption per scene, all distinct
    for scene in scenes:
        assert world.parse_caption(scene.caption) == {
            "size": scene.size,
            "colour": scene.colour,
            "shape": scene.shape,
            "position": scene.position,
            "background": scene.background,
        }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a small red circle at the left on a dark background", 1.0),
        ("a small red circle at the left on a dark background .", 1.0),  # trailing punctuation is tolerated
        ("a large red circle at the left on a dark background", 0.8),
        ("a large blue square at the right on a light background", 0.0),
        ("a small red circle", 0.0),  # not the grammar: nothing is credited
        ("", 0.0),
    ],
)
def test_attribute_accuracy_credits_each_correct_attribute(text, expected):
    scene = world.Scene("circle", "red", "small", "left", "dark")
    assert world.attribute_accuracy(scene, text) == pytest.approx(expected)


def test_splits_cover_every_scene_with_different_renderings():
    train = world.sample("train", 192, seed=0)
    heldout = world.sample("heldout", 192, seed=0)
    assert {scene for scene, _ in train} == {scene for scene, _ in heldout} == set(world.all_scenes())
    train_pixels = {image.tobytes() for _, image in train}
    assert not any(image.tobytes() in train_pixels for _, image in heldout)


def test_sampling_is_reproducible_and_seeded():
    first = [(scene, image.tobytes()) for scene, image in world.sample("heldout", 10, seed=3)]
    again = [(scene, image.tobytes()) for scene, image in world.sample("heldout", 10, seed=3)]
    other = [(scene, image.tobytes()) for scene, image in world.sample("heldout", 10, seed=4)]
    assert first == again
    assert first != other


def test_sampling_restricted_to_categories():
    pairs = world.sample("train", 20, categories=("cross",))
    assert {scene.shape for scene, _ in pairs} == {"cross"}


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown split 'test'; valid splits: train, heldout"):
        world.sample("test", 1)
