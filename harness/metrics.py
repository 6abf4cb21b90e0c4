"""Perplexity kept in log space, and the degenerate-text flag.

A "1e20" perplexity is only ~46 nats, but `math.exp` overflows above ~709.8 nats and float32 above ~88.7, so
every PPL is carried as a mean NLL (nats) or log10 PPL and only formatted for display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.errors import MetricError

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


def require_finite(value: float, what: str) -> float:
    """Return `value`, or raise a MetricError that says which metric of which run went bad."""
    if not math.isfinite(value):
        raise MetricError(f"{what} is {value}: the model produced NaN/inf (check the dtype and the inputs)")
    return value
