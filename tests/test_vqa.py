"""The visual-question-answering probe: its questions and answers come from the synthetic world's renderings, an
answer is right when it names the true answer and no other, the chance level is guessing among each question's
answers, and it runs through the same experiment, points and tables as any probe."""

from __future__ import annotations

import shutil

import pytest

from harness.core.errors import ImageFolderError
from harness.data.images import scan_image_root
from harness.runner.probes.vqa import QUESTIONS, QuestionSet
from harness.science.metric_registry import get_metric

COLOUR, SHAPE, POSITION = QUESTIONS


@pytest.mark.parametrize(
    ("question", "answer", "truth", "right"),
    [
        (COLOUR, "red", "red", True),
        (COLOUR, "The shape is Red.", "red", True),
        (COLOUR, "a small red square at the left", "red", True),
        (COLOUR, "red or blue", "red", False),  # naming another answer too is no answer
        (COLOUR, "a yellow blue", "blue", False),
        (COLOUR, "reddish", "red", False),  # a word, not a prefix
        (SHAPE, "A circle in the center", "circle", True),
        (SHAPE, "a large at the centre", "circle", False),
        (POSITION, "here the shape: left, centre or right?", "right", False),
        (POSITION, "on the right", "right", True),
    ],
)
def test_an_answer_is_right_when_it_names_the_truth_and_nothing_else(question, answer, truth, right):
    assert question.correct(answer, truth) is right


def test_every_image_is_asked_every_question_with_its_true_answers(images):
    """The items of a category come from the renderings' folder and file names: 4 images × 3 questions."""
    questions = QuestionSet(images)
    items = questions.items("circle")
    assert len(items) == 4 * len(QUESTIONS)
    first = images.check_category("circle")[0].path.name  # e.g. 00_large_red_left_dark.png
    _, _, colour, position, _ = first.removesuffix(".png").split("_")
    assert [(item.question.attribute, item.truth) for item in items[:3]] == [
        ("colour", colour),
        ("shape", "circle"),
        ("position", position),
    ]
    assert questions.chance == pytest.approx((1 / 4 + 1 / 4 + 1 / 3) / 3)


def test_images_without_known_answers_are_refused_by_name(images, tmp_path):
    root = tmp_path / "photos"
    (root / "circle").mkdir(parents=True)
    source = images.check_category("circle")[0].path
    shutil.copy(source, root / "circle" / "holiday.png")
    with pytest.raises(ImageFolderError, match=r"needs renderings of the synthetic world.*holiday\.png"):
        QuestionSet(scan_image_root(root)).items("circle")


def test_the_vqa_probe_measures_points_like_any_probe(session, unmodified):
    """On the tiny LLaVA: a point carries the probe's metrics and the accuracy's chance level, and its stage is
    classified by the probe's criterion."""
    experiment = session.experiment("tiny-llava", "vqa")
    point = experiment.measure("lm.down_proj", "circle", 3)
    assert point.probe == "vqa" and point.n_samples == 4 * len(QUESTIONS)
    assert set(point.metrics) == {"log10_ppl", "self_log10_ppl", "vqa_accuracy", "degenerate_rate"}
    assert 0 <= point.metrics["vqa_accuracy"] <= 1
    assert point.chance == {"vqa_accuracy": pytest.approx((1 / 4 + 1 / 4 + 1 / 3) / 3)}
    assert get_metric("vqa_accuracy").chance_title == "chance acc."
    assert experiment.options_record("circle")["stage1_accuracy_fraction"] == 0.9
    assert "stage1_clip_fraction" not in experiment.options_record("circle")  # the captioning probe's
