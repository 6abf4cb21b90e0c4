"""Real pretrained models on this machine: the first-use GGUF conversion, and one searched curve end to end.

1. Conversion: each packaged GGUF file converted into a fresh, temporary harness cache (what the set-up pays once).
2. One curve: ranking + adaptive search + the controls at k₂ (3 random-k seeds, mean ablation) of
   `lm.down_proj` on the built-in paragraph, for each model and ranking method, from a fresh rankings cache (the
   converted checkpoints are reused), with the evaluations counted.

Usage: python benchmarks/bench_real.py [--models smollm2-135m,gemma-3-270m] [--methods can,pcicn] [--no-convert]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from harness.core.paths import default_cache_dir
from harness.data.texts import BUILTIN_CATEGORY
from harness.models.loading import resolve_checkpoint_folder
from harness.models.registry import get_model_spec
from harness.runner.analysis import analyse_curve
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings


def conversion_rows(models: list[str]) -> list[list[object]]:
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory(prefix="can-bench-") as cache:
            start = time.perf_counter()
            folder = resolve_checkpoint_folder(get_model_spec(name), Path(cache))
            seconds = time.perf_counter() - start
            size = (folder / "model.safetensors").stat().st_size / 2**20
        rows.append(
            [name, get_model_spec(name).gguf.file.rsplit("/", 1)[-1], f"{seconds:.0f} s", f"{size:.0f} MB"]
        )
    return rows


def curve_rows(models: list[str], methods: list[str]) -> list[list[object]]:
    rows = []
    for name in models:
        for method in methods:
            with tempfile.TemporaryDirectory(prefix="can-bench-") as rankings:
                cache = Path(rankings)
                (cache / "checkpoints").symlink_to(default_cache_dir() / "checkpoints")
                settings = HarnessSettings.from_options(
                    {"cache_dir": cache, "device": "cpu", "dtype": "float32", "method": method}
                )
                session = HarnessSession(settings)
                experiment = session.experiment(name)  # loading is not the curve's cost
                start = time.perf_counter()
                analysis = analyse_curve(experiment, "lm.down_proj", BUILTIN_CATEGORY)
                seconds = time.perf_counter() - start
            controls = (
                "hold"
                if analysis.controls_hold
                else "collapse: " + ", ".join(c.intervention for c in analysis.controls if c.stage >= 2)
            )
            evaluations = analysis.search.evaluations + len(analysis.controls)
            rows.append(
                [name, experiment.settings.ranking.label, analysis.search.k1, analysis.search.k2, evaluations,
                 controls, f"{seconds:.0f} s"]
            )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    parser.add_argument("--methods", default="can,pcicn")
    parser.add_argument("--no-convert", action="store_true", help="skip the conversion timings")
    args = parser.parse_args()
    models, methods = args.models.split(","), args.methods.split(",")
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name in models:  # the curves reuse the set-up's converted checkpoints
        resolve_checkpoint_folder(get_model_spec(name), default_cache_dir())
    if not args.no_convert:
        print("\nfirst-use conversion (GGUF → float32 safetensors), into an empty cache")
        print(
            tabulate(conversion_rows(models), headers=["model", "file", "time", "checkpoint"], tablefmt="github")
        )
    print(
        "\none curve: ranking + adaptive search + controls at k₂ (lm.down_proj, built-in paragraph, CPU float32)"
    )
    headers = ["model", "ranking", "k₁", "k₂", "evaluations", "controls at k₂", "wall time"]
    print(tabulate(curve_rows(models, methods), headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
