"""Collapse experiments on text-only causal LMs: the PCICN setting, on the same sites, cases and summary as VLMs.

A category is a text (harness.data.texts): one sequence of at most 512 tokens, or windows of it. The reference PPL
of a point is the PPL of the text itself under the masked model (PCICN's "PPL on the same text"), and the ranking
loss is its teacher-forced NLL under the unmasked model. The text's first half is also a prompt: the greedy
continuation the (masked) model writes from it gives the self PPL, the degenerate rate (a column; stage 2 needs it
only with `text_stage2 = "ppl+degenerate"`) and the examples a report shows. There is no CLIP score.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from harness.core.metrics import is_degenerate_continuation, log10_ppl
from harness.data.texts import TextSet, TextWindow, text_windows
from harness.models.captioning import Caption, generate_captions, score_captions
from harness.models.loading import LoadedModel
from harness.models.masking import JointMask, NeuronMask
from harness.models.row_masks import mask_rows
from harness.models.sites import AnySite
from harness.runner.experiment import Experiment, ModelState, Observation, set_slices
from harness.runner.ranking_cache import RankingCache
from harness.runner.settings import HarnessSettings
from harness.science.metric_registry import DEGENERATE_RATE, LOG10_PPL, SELF_LOG10_PPL, get_metric
from harness.science.stages import Criterion


class TextExperiment(Experiment):
    """Measures collapse points of a text-only model on the run's texts."""

    kind = "text"
    metrics = (LOG10_PPL.name, SELF_LOG10_PPL.name, DEGENERATE_RATE.name)

    def __init__(
        self,
        loaded: LoadedModel,
        texts: TextSet,
        settings: HarnessSettings,
        rankings: RankingCache,
        state: ModelState | None = None,
    ):
        super().__init__(loaded, settings, rankings, state)
        self.texts = texts
        self._windows: dict[str, list[TextWindow]] = {}

    def _sibling(self, settings: HarnessSettings) -> TextExperiment:
        return TextExperiment(self.loaded, self.texts, settings, self.rankings, self.state)

    def windows(self, category: str) -> list[TextWindow]:
        if category not in self._windows:
            self._windows[category] = text_windows(
                self.loaded.tokenizer,
                self.texts.text(category),
                max_tokens=self.settings.text_max_tokens,
                window=self.settings.text_window,
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
        """What identifies the data of `category`: the sha256 of the text (how it is cut into windows are
        settings, recorded with the others)."""
        return {"text": self.texts.content_hash(category)}

    def observe(
        self, category: str, mask: NeuronMask | JointMask | None = None, *, stage_only: bool = False
    ) -> Observation:
        """Under `mask` (None: unmasked): the NLL of each window, and a continuation of each window's opening,
        which the unmasked model then scores to tell word salad from language. `stage_only`: the NLL alone when
        the stage reads nothing else (PCICN's criterion), a forward instead of a generate."""
        with mask or nullcontext():
            generate = not (stage_only and self._stage_reads_ppl_only)
            continuations = self._captions(category) if generate else None
            reference = score_captions(
                self.loaded, *self.ranking_data(category), batch_size=self.settings.batch_size
            )
        return self._observation(category, continuations, reference, masked=mask is not None)

    def observe_many(
        self, category: str, site: AnySite, neuron_sets: Sequence[torch.Tensor], *, stage_only: bool = False
    ) -> list[Observation]:
        """`observe` under each zero-ablation neuron set in one batched pass: the windows repeated once per set,
        row r masked with its own set, for the continuations and for the text's NLL."""
        openings, (prompts, targets) = list(self.samples(category)), self.ranking_data(category)
        sets, count = len(neuron_sets), len(openings)
        rows = [neurons for neurons in neuron_sets for _ in openings]
        masks = lambda part: mask_rows(site, rows[part])  # noqa: E731
        width = self.settings.batch_size * sets
        continuations = None
        if not (stage_only and self._stage_reads_ppl_only):
            continuations = generate_captions(
                self.loaded, openings * sets, max_new_tokens=self.settings.max_new_tokens, batch_size=width,
                chunk_mask=masks,
            )  # fmt: skip
        reference = score_captions(
            self.loaded, list(prompts) * sets, targets * sets, batch_size=width, chunk_mask=masks
        )
        return [
            self._observation(
                category, None if continuations is None else continuations[part], reference[part], masked=True
            )
            for part in set_slices(count, sets)
        ]

    def criterion(self) -> Criterion:
        """PCICN's criterion, the PPL of the text alone; with text_stage2 "ppl+degenerate" the degenerate rate of
        the continuations too."""
        read = (LOG10_PPL.name,)
        if self.settings.thresholds.text_stage2 == "ppl+degenerate":
            read += (DEGENERATE_RATE.name,)
        return Criterion(read, self.settings.thresholds)

    @property
    def _stage_reads_ppl_only(self) -> bool:
        """Whether the stage reads nothing measured on generated text: then a search point needs no generate."""
        return not any(get_metric(name).needs_generation for name in self.criterion().metrics)

    def _observation(
        self, category: str, continuations: list[Caption] | None, reference: list[float], *, masked: bool
    ) -> Observation:
        """The observation of continuations and text NLLs; a continuation's degenerate flag compares its NLL
        under the unmasked model with the unmasked model's NLL of the text itself."""
        values = {LOG10_PPL.name: [log10_ppl(nll) for nll in reference]}
        if continuations is None:
            return Observation(None, reference, values)
        text_nll = reference if not masked else self.baseline(category).reference_nll
        salad_log10 = self.settings.thresholds.stage2_log10_ppl_ratio
        degenerate = [
            is_degenerate_continuation(c.token_ids, c.text, nll, text, salad_log10)
            for c, nll, text in zip(
                continuations, self._unmasked_nll(category, continuations), text_nll, strict=True
            )
        ]
        values[SELF_LOG10_PPL.name] = [log10_ppl(c.self_nll) for c in continuations]
        values[DEGENERATE_RATE.name] = [float(flag) for flag in degenerate]
        return Observation(continuations, reference, values)

    def _unmasked_nll(self, category: str, continuations: list[Caption]) -> list[float | None]:
        """Each continuation's mean NLL under the unmasked model given its opening (None for an empty one)."""
        scored = [index for index, c in enumerate(continuations) if c.token_ids]
        openings = self.samples(category)
        nll = score_captions(
            self.loaded,
            [openings[index] for index in scored],
            [continuations[index] for index in scored],
            batch_size=self.settings.batch_size,
        )
        by_index = dict(zip(scored, nll, strict=True))
        return [by_index.get(index) for index in range(len(continuations))]
