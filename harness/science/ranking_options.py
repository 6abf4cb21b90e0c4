"""How neurons are ranked: the method and its free choices (harness.science.ranking computes the scores). Free of
torch, so that settings and the pytest plugin's options can be built without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.core.errors import UnknownNameError
from harness.core.recorded import RANKING, RESULTS, affects, recorded

Positions = Literal["all", "scored"]
POSITIONS = ("all", "scored")
AGGREGATIONS = ("mean", "max")
RANKING_METHODS = ("can", "activation", "gradient", "pcicn", "random")
SCORED_METHODS = ("can", "activation", "gradient", "pcicn")  # the methods that score positions of real activations


@dataclass(frozen=True)
class RankingOptions:
    """The ranking method and its free choices, each tagged with the methods that read it
    (harness.core.recorded): those go into the cache key and the results."""

    method: str = field(default="can", metadata=affects(RANKING))
    # can: exponent on |∂L/∂a|
    alpha: float = field(default=1.0, metadata=affects(RANKING, methods=("can",)))
    # 'all' keeps token 0, where massive activations live
    positions: Positions = field(default="all", metadata=affects(RANKING, methods=SCORED_METHODS))
    # over positions: 'mean' or 'max'; None: the method's own (max for pcicn), recorded as the one in effect
    aggregate: str | None = field(
        default=None, metadata=affects(RANKING, methods=SCORED_METHODS, recorded_as="aggregation")
    )
    # pcicn: std of the noise on the input embeddings (the paper's σ), K noisy passes per batch (the paper's K)
    noise_sigma: float = field(default=5.0, metadata=affects(RANKING, methods=("pcicn",)))
    noise_samples: int = field(default=100, metadata=affects(RANKING, methods=("pcicn",)))
    seed: int = field(default=0, metadata=affects(RANKING, methods=("pcicn", "random")))  # pcicn noise, random

    def __post_init__(self) -> None:
        if self.method not in RANKING_METHODS:
            raise UnknownNameError("ranking method", self.method, RANKING_METHODS)
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
    def aggregation(self) -> str:
        """How positions are aggregated: the option, else the method's default."""
        return self.aggregate or ("max" if self.method == "pcicn" else "mean")

    def used(self) -> dict[str, object]:
        """The options this method reads (their tags say which), by record name: what a result records and a
        cache key hashes."""
        return recorded(self, RESULTS, method=self.method)

    @property
    def label(self) -> str:
        """'CAN, α=1, mean over all positions': how tables and plots name the ranking."""
        names = {"can": "CAN", "pcicn": "PCICN", "alpha": "α", "noise_sigma": "σ", "noise_samples": "K"}
        used = self.used()
        parts = [names.get(self.method, self.method)]
        for name, value in list(used.items())[1:]:
            if name == "positions":
                parts.append(f"{used['aggregation']} over {value} positions")
            elif name != "aggregation":
                shown = f"{value:g}" if isinstance(value, float) else value
                parts.append(f"{names.get(name, name)}={shown}")
        return ", ".join(parts)
