"""Perplexity kept in log space, and the degenerate-text flags.

A "1e20" perplexity is only ~46 nats, but `math.exp` overflows above ~709.8 nats and float32 above ~88.7, so
every PPL is carried as a mean NLL (nats) or log10 PPL and only formatted for display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.core.errors import MetricError

LN10 = math.log(10.0)


def log10_ppl(mean_nll: float) -> float:
    """log10 of the perplexity whose natural-log is `mean_nll` nats per token."""
    return mean_nll / LN10


def format_score(value: float | None) -> str:
    """A CLIP score or chance level for tables; n/a where there is none (no other category, a text-only model)."""
    return "n/a" if value is None else f"{value:.1f}"


def format_ppl(log10_value: float) -> str:
    """Perplexity for humans, computed from its log10 without ever exponentiating a large number."""
    if not math.isfinite(log10_value):
        return str(log10_value)
    exponent = math.floor(log10_value)
    mantissa = round(10 ** (log10_value - exponent), 2)
    if mantissa >= 10:  # 9.999 rounds up: carry into the exponent
        mantissa, exponent = mantissa / 10, exponent + 1
    if exponent < 3:
        return f"{mantissa * 10**exponent:.3g}"
    return f"{mantissa:.2f}e{exponent}"


def is_degenerate(token_ids: Sequence[int], text: str) -> bool:
    """Empty text, or one token repeated: the signature of complete collapse in the papers' examples."""
    return not text.strip() or (len(token_ids) > 1 and len(set(token_ids)) == 1)


LOOP_DISTINCT_SHARE = 0.25  # a continuation of ≥ 8 tokens with at most this share of distinct tokens loops


def is_degenerate_continuation(
    token_ids: Sequence[int], text: str, reference_nll: float | None, text_nll: float, salad_log10: float
) -> bool:
    """A text model's continuation that is no language: empty or one token repeated (`is_degenerate`); a loop
    (≥ 8 tokens, at most a quarter of them distinct); or word salad: the unmasked model finds it at least
    10^salad_log10 times less likely per token than the text it continues (`reference_nll`, its mean NLL under the
    unmasked model given the opening, against `text_nll`, the text's own mean NLL), as for "yourselfoliciesillion
    youslavery", whose pieces are real tokens but whose sequence is not."""
    if is_degenerate(token_ids, text):
        return True
    if len(token_ids) >= 8 and len(set(token_ids)) <= LOOP_DISTINCT_SHARE * len(token_ids):
        return True
    return reference_nll is not None and (reference_nll - text_nll) / LN10 >= salad_log10


def require_finite(value: float, what: str) -> float:
    """Return `value`, or raise a MetricError that says which metric of which run went bad."""
    if not math.isfinite(value):
        raise MetricError(f"{what} is {value}: the model produced NaN/inf (check the dtype and the inputs)")
    return value
