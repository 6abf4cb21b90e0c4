"""Threshold search, side by side in one run: sequential vs k-parallel passes, adaptive vs linear.

1. Real curves (lm.down_proj, one category or text each; rankings and baselines computed before timing, every
   configuration in a fresh session so none reuses another's points): the sequential search (one k a pass)
   against the k-parallel one (`--parallel` ks a pass); for a text model also the sequential search as it was
   before lazy observation (a 64-token continuation at every k). Wall time, passes, evaluations, thresholds.
2. Synthetic step curves with k₂ ∈ {4, 1200, 5000} and k₁ = k₂/2 (k_max = 11008, LLaVA-1.5-7b's FFN width):
   evaluations and passes against the sequential bound 2⌈log₂ k₂⌉ + 4, and the linear scan's.

Usage: python benchmarks/bench_search.py [--models synth-llava smol-llava smollm2-135m] [--parallel 3]
       [--max-new-tokens 64] [--k-max 8192]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch
from tabulate import tabulate

from harness.core.paths import default_cache_dir
from harness.runner.curve import CollapseCurve
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.threshold_search import search_thresholds

CATEGORY = {"synth-llava": "circle", "smol-llava": "circle", "smollm2-135m": "paragraph"}


@dataclasses.dataclass(frozen=True)
class Configuration:
    label: str
    parallel: int
    generate_everywhere: bool = False  # the text search before lazy observation


def timed_search(args, model: str, configuration: Configuration):
    """One search on a fresh session; the ranking (cached on disk) and the baseline are computed first."""
    settings = HarnessSettings(
        cache_dir=args.cache_dir, device="cpu", dtype="float32", search_parallel=configuration.parallel,
        max_new_tokens=args.max_new_tokens, k_max=args.k_max,
    )  # fmt: skip
    experiment = HarnessSession(settings).experiment(model)
    category = CATEGORY[model]
    experiment.ranking(args.site, category)
    experiment.baseline(category)
    curve = CollapseCurve(experiment, args.site, category)
    started = time.perf_counter()
    result = curve.search(stage_only=not configuration.generate_everywhere)
    return result, time.perf_counter() - started


def model_rows(args) -> list[list[object]]:
    rows = []
    for model in args.models:
        configurations = [
            Configuration("sequential", 1),
            Configuration(f"k-parallel P={args.parallel}", args.parallel),
        ]
        if model == "smollm2-135m":
            configurations.insert(0, Configuration("sequential, generating at every k (before)", 1, True))
        results = [(c, *timed_search(args, model, c)) for c in configurations]
        reference = next(seconds for c, _, seconds in results if c.label == "sequential")
        for configuration, result, seconds in results:
            rows.append([
                f"{model} {args.site}", configuration.label, result.k1, result.k2, result.evaluations,
                len(result.rounds), f"{seconds:.1f} s", f"{reference / seconds:.2f}×", result.monotone,
            ])  # fmt: skip
    return rows


def step_curve(k1: int, k2: int):
    return lambda ks: [2 if k >= k2 else int(k >= k1) for k in ks]


def synthetic_rows(parallel: int) -> list[list[object]]:
    rows, k_max = [], 11008
    for k2 in (4, 1200, 5000):
        bound = 2 * (k2 - 1).bit_length() + 4
        for mode, width in (("adaptive", 1), ("adaptive", parallel), ("linear", 1)):
            result = search_thresholds(mode, step_curve(k2 // 2, k2), k_max, width)
            rows.append([
                f"k₁ = {k2 // 2}, k₂ = {k2}", f"{mode}, {width} k a pass", result.k1, result.k2,
                result.evaluations, len(result.rounds), bound if (mode, width) == ("adaptive", 1) else "",
            ])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["synth-llava", "smol-llava", "smollm2-135m"])
    parser.add_argument("--site", default="lm.down_proj")
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=HarnessSettings().max_new_tokens)
    parser.add_argument("--k-max", type=int, default=HarnessSettings().k_max)
    parser.add_argument("--cache-dir", default=default_cache_dir())
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    headers = ["curve", "search", "k₁", "k₂", "evaluations", "passes", "wall time", "speed-up", "monotone"]
    print(tabulate(model_rows(args), headers=headers), "\n")
    headers = ["synthetic curve", "search", "k₁", "k₂", "evaluations", "passes", "sequential bound"]
    print(tabulate(synthetic_rows(args.parallel), headers=headers))


if __name__ == "__main__":
    main()
