"""Is this checkout slower than another commit? One evaluation and one searched curve, timed side by side.

The other commit is exported (`git archive`) into a temporary folder; each measurement runs in a fresh Python
process whose `harness` is imported from one tree or the other, alternating (A B A B …) so that a shared, noisy
machine slows both alike. A first run of each tree fills its own ranking cache entry (the code fingerprint keys
it) and is not timed. Per run: the mean wall time of `Experiment.measure` at k = 2, 3, 4 (one masked evaluation:
generation and reference scoring of one category's captions) and of `analyse_curve` (the adaptive k₁/k₂ search
with its controls and layer breakdown), both after the model, the ranking and the baseline are in place. Prints
the medians and the ratios this checkout / the other commit.

Usage: python benchmarks/bench_versions.py --against REV [--model smol-llava] [--site lm.down_proj]
       [--category circle] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]

# Run in each tree: only API that both the checkout and older commits have.
PROBE = """
import json, sys, time
import torch
import harness
from harness import HarnessSession, HarnessSettings
from harness.runner.analysis import analyse_curve

model, site, category, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
settings = HarnessSettings(device="cpu", dtype="float32", max_new_tokens=24, k_max=16)
experiment = HarnessSession(settings).experiment(model)
experiment.measure(site, category, 1)  # the ranking, the baseline and every per-category cache in place
begun = time.perf_counter()
for k in (2, 3, 4):
    experiment.measure(site, category, k)
evaluation = (time.perf_counter() - begun) / 3
begun = time.perf_counter()
analysis = analyse_curve(experiment, site, category)
curve = time.perf_counter() - begun
print(json.dumps({"evaluation": evaluation, "curve": curve, "k1": analysis.search.k1, "k2": analysis.search.k2,
                  "imported_from": harness.__file__}))
"""


def export(revision: str, folder: Path) -> str:
    """The tree of `revision` written into `folder`; its full commit id."""
    commit = subprocess.run(["git", "rev-parse", revision], cwd=ROOT, capture_output=True, text=True, check=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True)
    archive_path = folder.with_suffix(".tar")
    archive_path.write_bytes(archive.stdout)
    with tarfile.open(archive_path) as tar:
        tar.extractall(folder, filter="data")
    return commit.stdout.strip()


def run(tree: Path, args: argparse.Namespace) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, args.model, args.site, args.category, str(args.threads)],
        cwd=tree, env=environment, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{result.stderr[-4000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    if not record.pop("imported_from").startswith(str(tree)):
        raise SystemExit(f"the run in {tree} imported another harness: is PYTHONPATH overridden?")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the commit to compare with (any git revision)")
    parser.add_argument("--model", default="smol-llava")
    parser.add_argument("--site", default="lm.down_proj")
    parser.add_argument("--category", default="circle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "other"
        commit = export(args.against, other)
        trees = {"this checkout": ROOT, f"{args.against} ({commit[:10]})": other}
        for name, tree in trees.items():
            print(f"warming {name}: its ranking cache entry", flush=True)
            run(tree, args)
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run(tree, args))
                print(f"  run {repeat + 1}/{args.repeats} of {name}: {runs[name][-1]}", flush=True)
    medians = {name: {key: statistics.median(r[key] for r in records) for key in ("evaluation", "curve")}
               for name, records in runs.items()}  # fmt: skip
    this, before = medians.values()
    rows = [[name, f"{m['evaluation']:.2f}", f"{m['curve']:.1f}", runs[name][0]["k1"], runs[name][0]["k2"]]
            for name, m in medians.items()]  # fmt: skip
    print(f"\n{args.model} {args.site} {args.category}, CPU float32, {args.threads} thread(s), "
          f"median of {args.repeats} alternating runs")  # fmt: skip
    print(tabulate(rows, headers=["code", "one evaluation (s)", "one searched curve (s)", "k₁", "k₂"]))
    print(f"ratio this / other: evaluation {this['evaluation'] / before['evaluation']:.2f}, "
          f"curve {this['curve'] / before['curve']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
