"""How the cases of one curve ended, as the reports read it: the pytest plugin tallies every case of a run and
hands each curve's share to the reporting layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CurveCases:
    """What the cases of one curve planned and how they ended, for its row in the tables."""

    planned_ks: frozenset[int] = frozenset()
    notes: tuple[str, ...] = ()
