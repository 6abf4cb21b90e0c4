"""Continuation, a text-only causal LM's own probe: the PCICN setting, on the same sites, cases and summary as
VLMs.

A category is a text (harness.data.texts): one sequence of at most 512 tokens, or windows of it. The reference PPL
of a point is the PPL of the text itself under the masked model (PCICN's "PPL on the same text"), and the ranking
loss is its teacher-forced NLL under the unmasked model. The text's first half is also a prompt: the greedy
continuation the (masked) model writes from it gives the self PPL, the degenerate rate (stage 2 reads it only
with `text_stage2 = "ppl+degenerate"`) and the examples a report shows. There is no CLIP score.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.core.metrics import is_degenerate_continuation, log10_ppl
from harness.data.texts import TextWindow, text_windows
from harness.models.captioning import Caption, generate_captions, score_captions
from harness.runner.probe import UNMASKED, Masking, Observation, Probe, register_probe
from harness.science.metric_registry import DEGENERATE_RATE, LOG10_PPL, SELF_LOG10_PPL, get_metric
from harness.science.stages import Criterion


@register_probe
class ContinuationProbe(Probe):
    """A text's PPL under the mask, and the continuations of its openings."""

    name = "continuation"
    data = "texts"
    metrics = (LOG10_PPL.name, SELF_LOG10_PPL.name, DEGENERATE_RATE.name)
    labelled = False  # a causal LM's own probe: its curves keep their short names

    def __init__(self, loaded, settings, sources, session):
        super().__init__(loaded, settings, sources, session)
        self.texts = sources.texts
        self._windows: dict[str, list[TextWindow]] = {}

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

    def criterion(self) -> Criterion:
        """PCICN's criterion, the PPL of the text alone; with text_stage2 "ppl+degenerate" the degenerate rate of
        the continuations too."""
        read = (LOG10_PPL.name,)
        if self.settings.thresholds.text_stage2 == "ppl+degenerate":
            read += (DEGENERATE_RATE.name,)
        return Criterion(read, self.settings.thresholds)

    def observe(
        self, category: str, masking: Masking = UNMASKED, *, stage_only: bool = False
    ) -> list[Observation]:
        """Under each variant of `masking`, in one batched pass: the NLL of each window, and a continuation of
        each window's opening, which the unmasked model then scores to tell word salad from language.
        `stage_only`: the NLL alone when the stage reads nothing measured on generated text (PCICN's criterion),
        a forward instead of a generate."""
        openings, (prompts, targets) = list(self.samples(category)), self.ranking_data(category)
        count, chunk_mask = masking.count, masking.chunk_mask(len(openings))
        width = self.settings.batch_size * count
        generate = not (stage_only and not self._stage_reads_generations)
        with masking.applied():
            continuations = None
            if generate:
                continuations = generate_captions(
                    self.loaded, openings * count, max_new_tokens=self.settings.max_new_tokens, batch_size=width,
                    chunk_mask=chunk_mask,
                )  # fmt: skip
            reference = score_captions(
                self.loaded, list(prompts) * count, targets * count, batch_size=width, chunk_mask=chunk_mask
            )
        return [
            self._observation(
                category,
                None if continuations is None else continuations[part],
                reference[part],
                masked=masking.site is not None,
            )
            for part in masking.slices(len(openings))
        ]

    @property
    def _stage_reads_generations(self) -> bool:
        """Whether the stage reads a metric measured on generated text: else a search point needs no generate."""
        return any(get_metric(name).needs_generation for name in self.criterion().metrics)

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
