"""Adaptive vs linear threshold search, side by side: masked evaluations and wall time.

1. Synthetic step curves with k₂ ∈ {4, 1200, 5000} and k₁ = k₂/2 (k_max = 11008, LLaVA-1.5-7b's FFN width):
   evaluations (to find both thresholds + the re-check of k₂ + 1) against the bound 2⌈log₂ k₂⌉ + 4;
   wall time at the per-evaluation cost measured in 2.
2. The embedded default model (`synth-llava`, lm.down_proj, one category): real evaluations and wall time of
   both modes on the same curve, and whether they agree.

Usage: python benchmarks/bench_search.py [--model synth-llava] [--site lm.down_proj] [--category circle]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from tabulate import tabulate

from harness.experiment import HarnessSession
from harness.settings import HarnessSettings, default_cache_dir
from harness.threshold_search import adaptive_search, linear_search


def step_curve(k1: int, k2: int):
    return lambda k: 2 if k >= k2 else int(k >= k1)


def evaluations(result) -> str:
    """ "found in + re-checks" for the adaptive search (the linear scan re-checks nothing)."""
    found = result.evaluations - len(result.rechecked)
    return f"{found} + {len(result.rechecked)}" if result.mode == "adaptive" else str(found)


def model_rows(args) -> tuple[list[list[object]], float]:
    """Both searches on one real curve, each with a fresh session so neither reuses the other's points."""
    rows, per_evaluation = [], []
    for mode in ("adaptive", "linear"):
        session = HarnessSession(HarnessSettings(cache_dir=args.cache_dir, device="cpu", dtype="float32"))
        experiment = session.experiment(args.model)
        experiment.ranking(args.site, args.category)  # cached on disk: ranking cost is not search cost
        experiment.baseline(args.category)
        start = time.perf_counter()
        result, _ = experiment.search(args.site, args.category, mode=mode)
        seconds = time.perf_counter() - start
        per_evaluation.append(seconds / result.evaluations)
        label = f"{args.model} {args.site} {args.category}"
        rows.append([label, mode, result.k1, result.k2, evaluations(result), f"{seconds:.1f} s", result.monotone])
    return rows, min(per_evaluation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synth-llava")
    parser.add_argument("--site", default="lm.down_proj")
    parser.add_argument("--category", default="circle")
    parser.add_argument("--cache-dir", default=default_cache_dir())
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows, per_evaluation = model_rows(args)
    adaptive, linear = rows
    print(
        tabulate(rows, headers=["curve", "mode", "k₁", "k₂", "evaluations", "wall time", "monotone"]),
        f"\nadaptive/linear: {adaptive[4]}/{linear[4]} evaluations; same thresholds: "
        f"{adaptive[2:4] == linear[2:4]}\n",
    )
    synthetic, k_max = [], 11008
    for k2 in (4, 1200, 5000):
        bound = 2 * (k2 - 1).bit_length() + 4
        for mode, search in (("adaptive", adaptive_search), ("linear", linear_search)):
            start = time.perf_counter()
            result = search(step_curve(k2 // 2, k2), k_max)
            seconds = time.perf_counter() - start
            synthetic.append(
                [f"k₁ = {k2 // 2}, k₂ = {k2}", mode, result.k1, result.k2, evaluations(result),
                 bound if mode == "adaptive" else "", f"{seconds * 1e3:.2f} ms",
                 f"{result.evaluations * per_evaluation:.0f} s"]
            )  # fmt: skip
    headers = [
        "synthetic curve",
        "mode",
        "k₁",
        "k₂",
        "evaluations",
        "bound",
        "search logic",
        "at model's cost/eval",
    ]
    print(tabulate(synthetic, headers=headers))


if __name__ == "__main__":
    main()
