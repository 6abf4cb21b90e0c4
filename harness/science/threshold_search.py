"""Find the two collapse thresholds of a curve with few evaluations: k₁ (first k at stage ≥ 1) and k₂ = k* (first
k at stage 2) over the nested top-k sets.

The papers step k = 1, 2, 3, … (≈ 1200 masked evaluations for InstructBLIP). If the stage never falls as k
grows, three bisections find the same k₁ and k₂ as that linear scan:

1. which dyadic bracket (2^(m−1), 2^m] holds k₂: a search over the bracket edges 1, 2, 4, …, k_max;
2. k₂ inside its bracket (m − 1 evaluations);
3. k₁ inside what the first two left open (at most m − 1 more: the edge below k₂'s bracket tells on which side
   of it k₁ lies).

Steps 2 and 3 cost at most 2(m − 1) whatever k₁ is, so step 1 is an alphabetic prefix code over the brackets
whose depths are chosen such that every bracket's total stays within 2m + c, with the smallest c the Kraft
inequality allows (c = 3 for k_max ≤ 2^27, c = 2 for k_max ≤ 2048); depth left over goes to the smallest
brackets, which therefore are tried first. Plain growth 1, 2, 4, … (the textbook choice) spends m + 1
evaluations on step 1 and then needs up to m − 1 more for a k₁ far below k₂: 3m in all.

Nothing guarantees monotonicity, so the search also re-checks k₂ + 1 (the "collapse at k, recovery at k + 1"
case) and reports every evaluated point that contradicts monotonicity; it never smooths them away. With that
re-check a search costs at most 2⌈log₂ k₂⌉ + c + 1. On a monotone curve the re-check cannot tell anything, so
this is one above the cheapest exact search of this kind; re-checking k₁ + 1 as well would cost one more and
break the 2⌈log₂ k₂⌉ + 4 budget for sites over 2048 neurons, so a stage-1 flicker is reported only where
evaluated points show it. A non-monotone dip *between* evaluated points is invisible to any sublinear search:
the linear mode is there to look for those.

With P ks per batched pass (per-row masks, `parallel_search`) the same brackets are searched (P+1)-ary: P bracket
edges a pass, then P points spread over the open brackets of k₂ and k₁. On a monotone curve it finds the same k₁
and k₂ in never more passes than the sequential search's evaluations (property tests); at P = 3, 26 → 11 and
30 → 13 passes for k₂ = 1200 and 5000 (benchmarks/bench_search.py).
On a non-monotone curve the two may settle on different onsets of one flicker, since they look at different ks.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

SEARCH_MODES = ("adaptive", "linear")


@dataclass(frozen=True)
class ThresholdSearch:
    """The outcome of one search: thresholds, every evaluated point (k → stage) and whether they are monotone."""

    mode: str
    k_max: int
    stages: dict[int, int]  # every evaluated k (0 = the unmasked baseline) → its stage
    # the smallest evaluated k at stage ≥ 1 (≥ 2), with k − 1 evaluated below it; None: none up to k_max
    k1: int | None
    k2: int | None
    rechecked: tuple[int, ...] = ()  # ks evaluated only to look for a recovery right after k₂
    # the masked passes in order, each the ks it evaluated together (one k each for a sequential search)
    rounds: tuple[tuple[int, ...], ...] = ()
    parallel: int = 1  # the most ks a pass evaluated together (P)

    @property
    def evaluations(self) -> int:
        """Masked evaluations spent (k ≥ 1), re-checks included; the baseline k = 0 is shared by every search."""
        return sum(1 for k in self.stages if k > 0)

    @property
    def violations(self) -> list[tuple[int, int]]:
        """Pairs (k, k') of evaluated points with k < k' but stage(k) > stage(k'): where the curve recovers."""
        ordered = sorted(self.stages.items())
        found, highest_k, highest = [], None, -1
        for k, stage in ordered:
            if stage < highest:
                found.append((highest_k, k))
            elif stage > highest:
                highest_k, highest = k, stage
        return found

    @property
    def monotone(self) -> bool:
        return not self.violations


def search_thresholds(
    mode: str, stages_at: Callable[[Sequence[int]], list[int]], k_max: int, parallel: int = 1
) -> ThresholdSearch:
    """The search of `mode` with `parallel` ks per masked pass; `stages_at(ks)` evaluates ks together (k = 0,
    the baseline, is asked for alone first). parallel = 1 is the sequential search, one k per pass."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}; valid: {', '.join(SEARCH_MODES)}")
    _check_parallel(parallel)
    if mode == "linear":
        return linear_search(stages_at, k_max, parallel)
    if parallel > 1:
        return parallel_search(stages_at, k_max, parallel)
    rounds: list[tuple[int, ...]] = []

    def stage_at(k: int) -> int:
        if k > 0:
            rounds.append((k,))
        return stages_at([k])[0]

    return dataclasses.replace(adaptive_search(stage_at, k_max), rounds=tuple(rounds))


def linear_search(
    stages_at: Callable[[Sequence[int]], list[int]], k_max: int, parallel: int = 1
) -> ThresholdSearch:
    """The papers' scan: k = 1, 2, 3, … up to the first complete collapse (or k_max), `parallel` ks a pass (the
    last pass may evaluate a few ks past k₂)."""
    _check_k_max(k_max)
    _check_parallel(parallel)
    stages = {0: stages_at([0])[0]}
    rounds: list[tuple[int, ...]] = []
    for start in range(1, k_max + 1, parallel):
        ks = tuple(range(start, min(start + parallel, k_max + 1)))
        stages.update(zip(ks, stages_at(list(ks)), strict=True))
        rounds.append(ks)
        if max(stages[k] for k in ks) >= 2:
            break
    k1, k2 = _first_at(stages, 1), _first_at(stages, 2)
    return ThresholdSearch("linear", k_max, stages, k1, k2, rounds=tuple(rounds), parallel=parallel)


def adaptive_search(stage_at: Callable[[int], int], k_max: int) -> ThresholdSearch:
    """k₂'s dyadic bracket by a weighted search over the bracket edges, then bisection of the k₂ and k₁ brackets,
    then k₂ + 1 re-checked. On a monotone curve: the linear scan's k₁ and k₂ within 2⌈log₂ k₂⌉ +
    search_slack(k_max) evaluations before the re-check."""
    _check_k_max(k_max)
    stages: dict[int, int] = {0: stage_at(0)}

    def evaluate(k: int) -> int:
        if k not in stages:
            stages[k] = stage_at(k)
        return stages[k]

    _find_bracket(evaluate, k_max)
    thresholds: dict[int, int | None] = {2: None, 1: None}
    rechecked: list[int] = []
    while any(_bracket(stages, stage)[1] != found for stage, found in thresholds.items()):
        # a second round only on a non-monotone curve: a later point fell below a threshold already found
        for stage in thresholds:
            below, above = _bracket(stages, stage)
            if above is None or above == thresholds[stage]:
                continue
            while above - below > 1:
                middle = (below + above) // 2
                if evaluate(middle) >= stage:
                    above = middle
                else:
                    below = middle
            thresholds[stage] = above
            if stage == 2 and above < k_max and above + 1 not in stages:
                evaluate(above + 1)  # does the model recover right after collapsing?
                rechecked.append(above + 1)
    return ThresholdSearch("adaptive", k_max, stages, thresholds[1], thresholds[2], tuple(rechecked))


def parallel_search(stages_at: Callable[[Sequence[int]], list[int]], k_max: int, parallel: int) -> ThresholdSearch:
    """The adaptive search with `parallel` = P ks per pass: a (P+1)-ary search over the same brackets.

    k₂'s dyadic bracket first: each pass asks P bracket edges that cut the remaining brackets into P + 1 groups
    of equal weight under the bracket code (weight 2^−depth, so small brackets are still tried first). Then the
    brackets of k₂ and k₁ together: each pass spends its P points on the open brackets, more to the one that
    would take more passes, spaced evenly inside each; a point left over re-checks k₂'s candidate + 1, which is
    also asked as soon as k₂ is found. As for P = 1: on a monotone curve the linear scan's k₁ and k₂, every
    evaluated point kept, recoveries reported."""
    _check_k_max(k_max)
    _check_parallel(parallel)
    stages: dict[int, int] = {0: stages_at([0])[0]}
    rounds: list[tuple[int, ...]] = []
    rechecked: list[int] = []

    def evaluate(ks: Sequence[int]) -> None:
        new = tuple(sorted(set(ks) - stages.keys()))
        if new:
            stages.update(zip(new, stages_at(list(new)), strict=True))
            rounds.append(new)

    edges = bracket_edges(k_max)
    weights = [Fraction(1, 2**depth) for depth in _bracket_code(k_max)[1]]  # k₂'s brackets, then "none"
    low, last = 0, len(weights) - 1
    while low < last:  # until a collapse bounds k₂ from above (or none up to k_max)
        cuts = [low + cut for cut in _weighted_cuts(weights[low:], parallel)]
        evaluate([edges[cut] for cut in cuts])
        if any(stages[edges[cut]] >= 2 for cut in cuts):
            break  # the brackets between the evaluated edges: evenly spaced points settle them as fast
        low = cuts[-1] + 1

    while True:
        open_brackets = {}
        for stage in (2, 1):
            below, above = _bracket(stages, stage)
            if above is not None and above - below > 1 and (below, above) not in open_brackets.values():
                open_brackets[stage] = (below, above)  # no stage-1 point seen yet: one bracket serves both
        recheck = _recheck_candidate(stages, k_max)
        if not open_brackets and recheck is None:
            break
        budget = parallel - (recheck is not None and 2 not in open_brackets)
        points = _spread(open_brackets, budget)
        candidate = open_brackets.get(2, (None, None))[1]
        spare = parallel - len(points)
        if recheck is not None and 2 not in open_brackets:
            points.append(recheck)
            rechecked.append(recheck)
        elif spare and candidate is not None and candidate < k_max and candidate + 1 not in stages:
            points.append(candidate + 1)  # k₂'s bracket is fully covered: k₂ + 1 is the candidate's + 1
            rechecked.append(candidate + 1)
        evaluate(points)
    k1, k2 = _first_at(stages, 1), _first_at(stages, 2)
    return ThresholdSearch("adaptive", k_max, stages, k1, k2, tuple(rechecked), tuple(rounds), parallel)


def bracket_edges(k_max: int) -> list[int]:
    """1, 2, 4, …, k_max: the upper edges of the brackets (2^(m−1), 2^m] that may hold k₂."""
    return sorted({min(2**m, k_max) for m in range(_log2_ceil(k_max) + 1)})


def search_slack(k_max: int) -> int:
    """c in the bound 2⌈log₂ k₂⌉ + c on the evaluations that find k₁ and k₂ (the re-check not counted)."""
    return _bracket_code(k_max)[0]


def _find_bracket(evaluate: Callable[[int], int], k_max: int) -> None:
    """Walk the bracket code: at each node, ask whether k₂ is at or below the last edge of the left subtree."""
    edges = bracket_edges(k_max)
    _, depths = _bracket_code(k_max)
    starts = _code_starts(depths)  # leaf i: the brackets ending at edges[i], then "no collapse ≤ k_max"
    low, high, node, width = 0, len(depths) - 1, Fraction(0), Fraction(1)
    while low < high:
        width /= 2
        left = [i for i in range(low, high + 1) if starts[i] < node + width]
        if len(left) == high - low + 1:
            continue  # every remaining leaf lies in the left half: descend without a question
        if left:
            if evaluate(edges[left[-1]]) >= 2:
                high = left[-1]
                continue
            low = left[-1] + 1
        node += width


def _weighted_cuts(weights: list[Fraction], parallel: int) -> list[int]:
    """Up to `parallel` cut positions c (between leaf c and c + 1) whose weight to the left is nearest to
    1/(P+1), 2/(P+1), … of the total: the questions of one pass of a (P+1)-ary search."""
    if len(weights) - 1 <= parallel:
        return list(range(len(weights) - 1))
    total, cumulative = sum(weights), list(itertools.accumulate(weights))
    cuts = set()
    for part in range(1, parallel + 1):
        target = total * part / (parallel + 1)
        cuts.add(min(range(len(weights) - 1), key=lambda c: (abs(cumulative[c] - target), c)))
    while len(cuts) < parallel:  # quantiles that fell on one cut: split the heaviest group of several leaves
        bounds = [-1, *sorted(cuts), len(weights) - 1]
        groups = [(first + 1, last) for first, last in itertools.pairwise(bounds) if last - first > 1]
        first, last = max(groups, key=lambda g: cumulative[g[1]] - (cumulative[g[0] - 1] if g[0] else 0))
        middle = (cumulative[last] + (cumulative[first - 1] if first else 0)) / 2
        cuts.add(min(range(first, last), key=lambda c: (abs(cumulative[c] - middle), c)))
    return sorted(cuts)


def _spread(brackets: dict[int, tuple[int, int]], budget: int) -> list[int]:
    """`budget` points over the open brackets (below, above): one at a time to the bracket that would still take
    the most passes, then evenly spaced inside each; never more points than a bracket has unknown ks."""
    unknown = {stage: above - below - 1 for stage, (below, above) in brackets.items()}
    given = dict.fromkeys(brackets, 0)
    for _ in range(budget):
        wanting = [stage for stage in brackets if given[stage] < unknown[stage]]
        if not wanting:
            break
        stage = max(wanting, key=lambda s: (_passes(unknown[s], given[s]), s))
        given[stage] += 1
    points = set()
    for stage, (below, above) in brackets.items():
        count = given[stage]
        points.update(below + (above - below) * j // (count + 1) for j in range(1, count + 1))
    return sorted(points)


def _passes(unknown: int, points: int) -> float:
    """Passes a (points + 1)-ary search needs to settle `unknown` ks (infinite without points)."""
    return math.inf if points == 0 else math.log(unknown + 1) / math.log(points + 1)


def _recheck_candidate(stages: dict[int, int], k_max: int) -> int | None:
    """k₂ + 1 when k₂ is settled and k₂ + 1 is not evaluated yet: does the model recover right after?"""
    below, above = _bracket(stages, 2)
    if above is None or above - below > 1 or above >= k_max or above + 1 in stages:
        return None
    return above + 1


def _bracket_code(k_max: int) -> tuple[int, list[int]]:
    """(c, depth of each leaf): the leaves are k₂'s brackets in order, then "none ≤ k_max"; c is the smallest
    slack whose depth budgets satisfy Kraft's inequality."""
    slack = 0
    while sum(Fraction(1, 2**budget) for budget in _depth_budgets(k_max, slack)) > 1:
        slack += 1
    return slack, _greedy_depths(_depth_budgets(k_max, slack))


def _depth_budgets(k_max: int, slack: int) -> list[int]:
    """How deep each leaf may sit so that its bracket's whole search stays within 2m + slack: the evaluations
    left once the bracket (low, high] is known are k₂'s bisection and at most as many again for k₁."""
    edges = bracket_edges(k_max)
    left_after = [0] + [
        _log2_ceil(high - low) + _log2_ceil(max(high - low, low)) for low, high in itertools.pairwise(edges)
    ]
    budgets = [2 * _log2_ceil(edge) + slack - rest for edge, rest in zip(edges, left_after, strict=True)]
    budgets.append(budgets[-1])  # "none ≤ k_max": as deep as the last bracket
    return [min(budgets[i:]) for i in range(len(budgets))]  # non-decreasing: a canonical code is alphabetic


def _greedy_depths(budgets: list[int]) -> list[int]:
    """Shallowest non-decreasing depths within the budgets, smallest brackets first, keeping Kraft's sum ≤ 1."""
    depths: list[int] = []
    for i in range(len(budgets)):
        rest = sum(Fraction(1, 2**b) for b in budgets[i + 1 :])
        used = sum(Fraction(1, 2**d) for d in depths)
        depth = depths[-1] if depths else 0
        while used + Fraction(1, 2**depth) + rest > 1:
            depth += 1
        depths.append(depth)  # ≤ budget: the budgets themselves keep the sum ≤ 1
    return depths


def _code_starts(depths: list[int]) -> list[Fraction]:
    """Where each leaf's codeword starts in [0, 1): the canonical code of non-decreasing lengths is alphabetic."""
    starts, position = [], Fraction(0)
    for depth in depths:
        starts.append(position)
        position += Fraction(1, 2**depth)
    return starts


def _bracket(stages: dict[int, int], stage: int) -> tuple[int, int | None]:
    """(largest evaluated k below the smallest evaluated k at ≥ stage with stage(k) < stage, that smallest k)."""
    above = min((k for k, s in stages.items() if s >= stage), default=None)
    if above is None:
        return max(stages), None
    # -1 when the baseline itself is already at `stage`: the threshold is then k = 0
    below = max((k for k, s in stages.items() if k < above and s < stage), default=-1)
    return below, above


def _first_at(stages: dict[int, int], stage: int) -> int | None:
    return min((k for k, s in stages.items() if s >= stage), default=None)


def _log2_ceil(n: int) -> int:
    return max(n - 1, 0).bit_length()


def _check_parallel(parallel: int) -> None:
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ValueError(f"the ks per search pass must be an integer ≥ 1, got {parallel!r}")


def _check_k_max(k_max: int) -> None:
    if not isinstance(k_max, int) or isinstance(k_max, bool) or k_max < 1:
        raise ValueError(f"k_max must be an integer ≥ 1 (the largest k to search), got {k_max!r}")
