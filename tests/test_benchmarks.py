"""The benchmark scripts run and say what they measured (their figures are not checked here: speed targets live
in the benchmarks' own output, never in timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, CAN_HARNESS_CACHE=str(cache_dir))
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=environment,
    )  # fmt: skip


def test_the_gpu_benchmark_runs_its_code_at_a_small_scale(cache_dir, tmp_path):
    """The script prepared for one GPU, on a small random LLaVA on this CPU: every figure is written."""
    out = tmp_path / "figures.json"
    args = ["--scale", "tiny", "--images", "4", "--batch-sizes", "4", "--repeats", "1", "--max-new-tokens", "4"]
    result = run_benchmark("bench_gpu.py", *args, "--json", str(out), cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["model"] == "random-llava-1.5-7b-tiny"
    names = [name.removesuffix(" @ batch 4") for name in figures if name.endswith(" @ batch 4")]
    assert sorted(names) == sorted([
        "CAN ranking images/s", "forward+backward images/s", "CAN ranking / forward+backward",
        "evaluation / its masked generate", "k-parallel speed-up, P=3",
    ])  # fmt: skip
    assert all(figures[f"{name} @ batch 4"] > 0 for name in names)


def test_the_figures_benchmark_names_an_unknown_section(cache_dir):
    result = run_benchmark("bench_figures.py", "--skip", "serach", cache_dir=cache_dir)
    assert result.returncode == 2
    assert "unknown sections ['serach']" in result.stderr and "search, evaluation" in result.stderr


def test_the_figures_benchmark_checks_the_authors_checkout_before_measuring(cache_dir, tmp_path):
    result = run_benchmark("bench_figures.py", "--authors-repo", str(tmp_path), cache_dir=cache_dir)
    assert result.returncode == 2 and "method/1_importance_evaluation.py in it" in result.stderr
