"""Collapse experiments on text-only causal LMs: the PCICN setting, on the same sites, cases and summary as VLMs.

A category is a text (harness.texts), cut into windows of tokens. The reference PPL of a point is the PPL of the
windows themselves under the masked model (PCICN's "PPL on the same text"), and the ranking loss is their
teacher-forced NLL under the unmasked model. Each window's first half is also a prompt: the greedy continuation
the (masked) model writes from it gives the self PPL, the degenerate rate (stage 2 needs degenerate text, as a
VLM's needs captions at CLIP chance or degenerate) and the examples a report shows. There is no CLIP score.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

from harness.captioning import Caption, score_captions
from harness.experiment import ModelExperiment, Observation
from harness.loading import LoadedModel
from harness.masking import JointMask, NeuronMask
from harness.ranking_cache import RankingCache
from harness.settings import HarnessSettings
from harness.texts import TextSet, TextWindow, text_windows


class TextExperiment(ModelExperiment):
    """Measures collapse points of a text-only model on the run's texts."""

    def __init__(self, loaded: LoadedModel, texts: TextSet, settings: HarnessSettings, rankings: RankingCache):
        super().__init__(loaded, None, None, settings, rankings)
        self.texts = texts
        self._windows: dict[str, list[TextWindow]] = {}

    def windows(self, category: str) -> list[TextWindow]:
        if category not in self._windows:
            self._windows[category] = text_windows(
                self.loaded.tokenizer,
                self.texts.text(category),
                window=self.settings.text_window,
                max_windows=self.settings.max_windows,
            )
        return self._windows[category]

    def samples(self, category: str) -> Sequence[tuple[int, ...]]:
        """The prompts continuations are generated from: each window's opening."""
        return [window.opening for window in self.windows(category)]

    def ranking_data(self, category: str) -> tuple[Sequence[tuple[int, ...]], list[Caption]]:
        """The windows as teacher-forced sequences: the BOS (or first token) as prompt, the rest as target."""
        windows = self.windows(category)
        decode = self.loaded.tokenizer.decode
        targets = [Caption(w.scored, ended=False, text=decode(w.scored), self_nll=None) for w in windows]
        return [window.scoring_prompt for window in windows], targets

    def data_record(self, category: str) -> dict[str, object]:
        return {
            "loss": "teacher-forced NLL of the given text",
            "text": self.texts.content_hash(category),
            "text_window": self.settings.text_window,
            "max_windows": self.settings.max_windows,
        }

    def observe(self, category: str, mask: NeuronMask | JointMask | None = None) -> Observation:
        """Under `mask` (None: unmasked): the NLL of each window, and a continuation of each window's opening."""
        with mask or nullcontext():
            continuations = self._captions(category)
            reference = score_captions(
                self.loaded, *self.ranking_data(category), batch_size=self.settings.batch_size
            )
        return Observation(continuations, reference, clip=None, clip_chance=None)

    def chance_images(self, category: str) -> int:
        return 0
