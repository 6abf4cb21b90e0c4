"""Ranking methods as declarations: each one is a `RankingMethod` registered by name, saying which ranking options
it reads, how it aggregates positions by default, how tables name it, and the function that scores neurons. The
`--can-method` choices and help, the options a cache key and a result record (harness.core.recorded) and the
ranking's label are all read from here, so a new method is one `register_ranking_method(...)` call.

Free of torch: the scoring function is named by its import path ("module:function") and imported on first use,
so that settings and the pytest plugin's options can be built without loading torch. A method registered by a
user may give the function itself.

A scoring function takes `(loaded, sites, images, captions, *, options, batch_size, task)` and returns one
[layers, channels] float32 tensor per site (flat [neurons] for a joint site's parts alike), higher = more
important; `task` is a harness.core.progress task whose `total` and `step()` it may use to show progress.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from harness.core.errors import UnknownNameError
from harness.core.named import Registry

AGGREGATIONS = ("mean", "max")
POSITION_OPTIONS = ("positions", "aggregate")  # read together by every method that scores token positions


@dataclass(frozen=True)
class RankingMethod:
    """One way of scoring neurons.

    `reads`: the RankingOptions fields it depends on besides `method` (only these enter its cache key and
    records); a method that scores token positions reads both `positions` and `aggregate` and names its
    `default_aggregation`. `label`: its name in tables and plots. `summary`: one phrase for `--can-method`'s help.
    `scorer`: the scoring function, or its "module:function" path."""

    name: str
    label: str
    summary: str
    scorer: str | Callable[..., list]
    reads: tuple[str, ...] = ()
    default_aggregation: str | None = None

    def __post_init__(self) -> None:
        scores_positions = [option in self.reads for option in POSITION_OPTIONS]
        if any(scores_positions) and not all(scores_positions):
            both = " and ".join(POSITION_OPTIONS)
            raise ValueError(f"ranking method {self.name!r} must read {both} together, or neither")
        if all(scores_positions) and self.default_aggregation not in AGGREGATIONS:
            what = f"default aggregation of ranking method {self.name!r}"
            raise UnknownNameError(what, self.default_aggregation, AGGREGATIONS)
        if not any(scores_positions) and self.default_aggregation is not None:
            raise ValueError(f"ranking method {self.name!r} names a default aggregation but reads no positions")

    @property
    def score(self) -> Callable[..., list]:
        """The scoring function (imported on first use when given by path)."""
        if callable(self.scorer):
            return self.scorer
        module, _, function = self.scorer.partition(":")
        return getattr(importlib.import_module(module), function)


_METHODS: Registry[RankingMethod] = Registry("ranking method")


def register_ranking_method(method: RankingMethod, *, replace: bool = False) -> RankingMethod:
    """Add a ranking method; re-declaring a name needs `replace=True`, so a typo never shadows a built-in."""
    return _METHODS.add(method.name, method, replace=replace)


def get_ranking_method(name: str) -> RankingMethod:
    return _METHODS.get(name)


def ranking_method_names() -> list[str]:
    return _METHODS.names()


def methods_help() -> str:
    """`--can-method`'s list: every registered method with its summary."""
    return "; ".join(f"{method.name} ({method.summary})" for method in _METHODS.values())


def default_aggregations_help() -> str:
    """`--can-aggregate`'s default: each position-scoring method's own."""
    return ", ".join(f"{m.default_aggregation} for {m.name}" for m in _METHODS.values() if m.default_aggregation)


_SCORES = "harness.science.ranking"
register_ranking_method(
    RankingMethod(
        "can",
        "CAN",
        "the CAN paper: |∂L/∂a|^α·|a|",
        f"{_SCORES}:can_scores",
        reads=("alpha", *POSITION_OPTIONS),
        default_aggregation="mean",
    )
)
register_ranking_method(
    RankingMethod(
        "activation",
        "activation",
        "|a|",
        f"{_SCORES}:activation_scores",
        reads=POSITION_OPTIONS,
        default_aggregation="mean",
    )
)
register_ranking_method(
    RankingMethod(
        "gradient",
        "gradient",
        "|∂L/∂a|",
        f"{_SCORES}:gradient_scores",
        reads=POSITION_OPTIONS,
        default_aggregation="mean",
    )
)
register_ranking_method(
    RankingMethod(
        "pcicn",
        "PCICN",
        "PCICN: |a − a′| under noise on the input embeddings",
        f"{_SCORES}:noise_sensitivity_scores",
        reads=("noise_sigma", "noise_samples", "seed", *POSITION_OPTIONS),
        default_aggregation="max",
    )
)
register_ranking_method(
    RankingMethod(
        "random", "random", "seeded uniform scores, the null model", f"{_SCORES}:random_scores", reads=("seed",)
    )
)
