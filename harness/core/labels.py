"""How a curve is named in messages, baseline keys and file names: `model / site / category`, and its ranking when
that is not the default, so runs with the default ranking keep short names and stored baselines keep their keys."""

from __future__ import annotations

DEFAULT_RANKING = "CAN, α=1, mean over all positions"  # RankingOptions().label (checked by the tests)


def curve_label(
    model: str,
    site: str,
    category: str,
    ranking: str | None = None,
    separator: str = " / ",
    probe: str | None = None,
) -> str:
    """`model / site / category`, then the ranking when it is not the default and the probe when it is named
    (None: the model family's own probe, which labels leave out)."""
    parts = [model, site, category] + ([ranking] if ranking not in (None, DEFAULT_RANKING) else [])
    return separator.join(parts + ([probe] if probe else []))
