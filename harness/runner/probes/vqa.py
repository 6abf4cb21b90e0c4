"""Visual question answering on the synthetic world: short questions whose answers the world defines, asked of a
vision-language model about each image of a category, and judged by the accuracy of its answers.

Each image (a rendering of the synthetic world, whose file name and folder give its scene, harness.data.world) is
asked every question below, in the model's own prompt template with the question as the instruction. An answer is
right when, of the question's possible answers, it names the true one and no other ("The shape is red." answers
"red"). The reference PPL of a point is that of the answers under the unmasked model, as for captions, and the
ranking's targets are the unmasked model's own answers.

The chance level of the accuracy is what guessing among each question's possible answers scores: the mean of
1 / (number of answers) over the questions. Stage 1: the reference PPL doubles or the accuracy falls to
`stage1_accuracy_fraction` (0.9) of its baseline. Stage 2 (complete collapse): the reference PPL rises tenfold
and the accuracy is at or below chance — the answers no longer carry the image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from harness.core.errors import ImageFolderError
from harness.core.metrics import log10_ppl
from harness.data import world
from harness.data.images import ImageSet
from harness.models.captioning import Caption
from harness.models.prompts import VisualPrompt
from harness.runner.probe import UNMASKED, Masking, Observation, register_probe
from harness.runner.probes.captioning import ImageProbe
from harness.science.metric_registry import DEGENERATE_RATE, LOG10_PPL, SELF_LOG10_PPL, VQA_ACCURACY
from harness.science.stages import Criterion


@dataclass(frozen=True)
class Question:
    """One question about a scene attribute, and the answers the world allows."""

    attribute: str
    text: str
    answers: tuple[str, ...]

    def correct(self, answer: str, truth: str) -> bool:
        """Whether `answer` names the true answer and none of the others."""
        named = {word for word in re.findall(r"[a-z]+", answer.lower()) if word in self.answers}
        return named == {truth}


QUESTIONS = (
    Question("colour", "What colour is the shape: red, green, blue or yellow?", tuple(world.COLOURS)),
    Question("shape", "What shape is it: circle, square, triangle or cross?", world.CATEGORIES),
    Question("position", "Where is the shape: left, centre or right?", tuple(world.POSITIONS)),
)


@dataclass(frozen=True)
class Item:
    """One question about one image, and its true answer."""

    image_index: int
    question: Question
    truth: str


class QuestionSet:
    """The questions of each category: every question about every image, the images' scenes read from their
    file names (the world's renderings); an image set of other images has no answers to check."""

    def __init__(self, images: ImageSet):
        self.images = images

    @property
    def categories(self) -> list[str]:
        return self.images.categories

    @cached_property
    def _scenes(self) -> dict[str, list[world.Scene]]:
        scenes, unnamed = {}, []
        for category in self.images.categories:
            records = self.images.check_category(category)
            found = [world.scene_of_file(record.path) for record in records]
            unnamed += [str(record.path) for record, scene in zip(records, found, strict=True) if scene is None]
            scenes[category] = found
        if unnamed:
            raise ImageFolderError(
                f"the vqa probe needs renderings of the synthetic world, whose folder and file name give the "
                f"scene (e.g. circle/00_small_red_left_dark.png); {len(unnamed)} image(s) are not: "
                + ", ".join(unnamed[:5])
                + ("" if len(unnamed) <= 5 else ", …")
            )
        return scenes

    def items(self, category: str) -> list[Item]:
        """Every question about every image of `category`, image-major."""
        return [
            Item(index, question, getattr(scene, question.attribute))
            for index, scene in enumerate(self._scenes[category])
            for question in QUESTIONS
        ]

    def content_hashes(self, category: str) -> list[str]:
        """The images' hashes and the questions asked: what identifies the category's items."""
        self.items(category)  # the images are renderings with known answers
        return [*self.images.content_hashes(category), *(question.text for question in QUESTIONS)]

    @property
    def chance(self) -> float:
        """The accuracy of guessing uniformly among each question's answers."""
        return sum(1 / len(question.answers) for question in QUESTIONS) / len(QUESTIONS)


@register_probe
class VqaProbe(ImageProbe):
    """Questions about each image, judged by the accuracy of the answers and their reference PPL."""

    name = "vqa"
    metrics = (LOG10_PPL.name, SELF_LOG10_PPL.name, VQA_ACCURACY.name, DEGENERATE_RATE.name)

    def __init__(self, loaded, settings, sources, session):
        super().__init__(loaded, settings, sources, session)
        self.questions = QuestionSet(self.images)

    @classmethod
    def data_set(cls, sources) -> QuestionSet:
        return QuestionSet(sources.images)

    def samples(self, category: str) -> Sequence[VisualPrompt]:
        """Each question with its image, in the model's prompt template."""
        images = self.images.images(category)
        return [
            VisualPrompt(images[item.image_index], item.question.text) for item in self.questions.items(category)
        ]

    def ranking_data(self, category: str) -> tuple[Sequence[VisualPrompt], list[Caption]]:
        """The questions and the unmasked model's own answers."""
        return self.samples(category), self.baseline(category).captions

    def criterion(self) -> Criterion:
        """Complete collapse: the answers' reference PPL blows up and their accuracy falls to chance."""
        return Criterion((LOG10_PPL.name, VQA_ACCURACY.name), self.settings.thresholds)

    def observe(
        self, category: str, masking: Masking = UNMASKED, *, stage_only: bool = False
    ) -> list[Observation]:
        """Answers generated under each variant of `masking`, scored by the unmasked model and checked against the
        scenes. The stage reads the accuracy, so `stage_only` changes nothing."""
        answers = self.generate(category, masking, self.settings.answer_max_tokens)
        return [self._observation(category, answers[part]) for part in masking.slices(len(self.samples(category)))]

    def _observation(self, category: str, answers: list[Caption]) -> Observation:
        items = self.questions.items(category)
        reference = self.reference_nll(category, answers)
        values = {
            LOG10_PPL.name: [log10_ppl(nll) for nll in reference],
            SELF_LOG10_PPL.name: [log10_ppl(answer.self_nll) for answer in answers],
            VQA_ACCURACY.name: [
                float(item.question.correct(answer.text, item.truth))
                for item, answer in zip(items, answers, strict=True)
            ],
            DEGENERATE_RATE.name: [float(answer.degenerate) for answer in answers],
        }
        return Observation(answers, reference, values, {VQA_ACCURACY.name: self.questions.chance})
