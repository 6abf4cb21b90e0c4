"""How neurons are ranked: the method and its free choices (harness.science.ranking computes the scores). Free of
torch, so that settings and the pytest plugin's options can be built without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from harness.core.errors import UnknownNameError
from harness.core.recorded import RANKING, RESULTS, affects, recorded
from harness.science.ranking_methods import AGGREGATIONS, RankingMethod, get_ranking_method

Positions = Literal["all", "scored"]
POSITIONS = ("all", "scored")
PER_METHOD = affects(RANKING, per_method=True)  # read by the methods that name it (science.ranking_methods)


@dataclass(frozen=True)
class RankingOptions:
    """The ranking method (a registered RankingMethod) and the free choices of every method. A method names the
    ones it reads: only those go into its cache key and results (harness.core.recorded)."""

    method: str = field(default="can", metadata=affects(RANKING))
    # can: exponent on |∂L/∂a|
    alpha: float = field(default=1.0, metadata=PER_METHOD)
    # 'all' keeps token 0, where massive activations live
    positions: Positions = field(default="all", metadata=PER_METHOD)
    # over positions: 'mean' or 'max'; None: the method's own (max for pcicn), recorded as the one in effect
    aggregate: str | None = field(
        default=None, metadata=affects(RANKING, per_method=True, recorded_as="aggregation")
    )
    # pcicn: std of the noise on the input embeddings (the paper's σ), K noisy passes per batch (the paper's K)
    noise_sigma: float = field(default=5.0, metadata=PER_METHOD)
    noise_samples: int = field(default=100, metadata=PER_METHOD)
    seed: int = field(default=0, metadata=PER_METHOD)  # pcicn noise, random

    def __post_init__(self) -> None:
        unknown = set(self.method_declaration.reads) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(
                f"ranking method {self.method!r} reads {', '.join(sorted(unknown))}, which RankingOptions has not"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"CAN alpha must be in [0, 1], got {self.alpha!r}")
        if self.positions not in POSITIONS:
            raise UnknownNameError("position set", self.positions, POSITIONS)
        if self.aggregate is not None and self.aggregate not in AGGREGATIONS:
            raise UnknownNameError("position aggregation", self.aggregate, AGGREGATIONS)
        if not (self.noise_sigma > 0 and self.noise_sigma < float("inf")):
            raise ValueError(f"PCICN noise sigma must be a finite number > 0, got {self.noise_sigma!r}")
        if self.noise_samples < 1:
            raise ValueError(f"PCICN noise samples must be ≥ 1, got {self.noise_samples!r}")

    @property
    def method_declaration(self) -> RankingMethod:
        """The registered method (an unknown name is an error listing the registered ones)."""
        return get_ranking_method(self.method)

    @property
    def aggregation(self) -> str | None:
        """How positions are aggregated: the option, else the method's default (None: it scores no positions)."""
        return self.aggregate or self.method_declaration.default_aggregation

    def used(self) -> dict[str, object]:
        """The options this method reads, by record name: what a result records and a cache key hashes."""
        return recorded(self, RESULTS, reads=self.method_declaration.reads)

    @property
    def label(self) -> str:
        """'CAN, α=1, mean over all positions': how tables and plots name the ranking."""
        names = {"alpha": "α", "noise_sigma": "σ", "noise_samples": "K"}
        used = self.used()
        parts = [self.method_declaration.label]
        for name, value in list(used.items())[1:]:
            if name == "positions":
                parts.append(f"{used['aggregation']} over {value} positions")
            elif name != "aggregation":
                shown = f"{value:g}" if isinstance(value, float) else value
                parts.append(f"{names.get(name, name)}={shown}")
        return ", ".join(parts)
