"""The controls at k₂ one by one vs the random-k controls in one batched pass (per-row masks), side by side.

Both orders are interleaved over `--repeats`; the points must agree (captions, stages, PPLs).

Usage: python benchmarks/bench_controls.py [--model smol-llava] [--site lm.down_proj] [--category circle] [--k 2]
"""

from __future__ import annotations

import argparse
import time

from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ablation import Intervention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smol-llava")
    parser.add_argument("--site", default="lm.down_proj")
    parser.add_argument("--category", default="circle")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = HarnessSettings(categories=(args.category,), max_new_tokens=args.max_new_tokens, device="cpu")
    experiment = HarnessSession(settings).experiment(args.model)
    controls = [Intervention(selection="random", seed=seed) for seed in range(3)] + [Intervention(ablation="mean")]
    for intervention in (Intervention(), controls[-1]):  # ranking, baseline and means computed before timing
        experiment.measure(args.site, args.category, args.k, intervention)
    for repeat in range(args.repeats):
        started = time.perf_counter()
        alone = [experiment.measure(args.site, args.category, args.k, c) for c in controls]
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        together = experiment.measure_many(args.site, args.category, [(args.k, c) for c in controls])
        batched = time.perf_counter() - started
        agree = all(a.captions == b.captions and a.stage == b.stage for a, b in zip(alone, together, strict=True))
        drift = max(abs(a.log10_ppl_ratio - b.log10_ppl_ratio) for a, b in zip(alone, together, strict=True))
        print(
            f"repeat {repeat}: one by one {sequential:.1f} s, batched {batched:.1f} s, ratio "
            f"{sequential / batched:.2f}; captions and stages agree: {agree}; max |Δ log10 PPL| {drift:.2g}"
        )


if __name__ == "__main__":
    main()
