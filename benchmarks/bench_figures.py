"""Every speed figure of the README's performance section, measured side by side in one run, each ratio printed
against its target (on the machine it runs on: the targets were set for 2 CPU cores).

1. Threshold search: sequential vs k-parallel wall time on synth-llava, smol-llava and smollm2-135m (same k₁, k₂?).
2. One VLM evaluation (greedy captions, reference scoring, CLIP) vs the masked generate alone, and the reference
   scoring after cached prompt prefixes vs the whole-sequence scoring it replaces.
3. A searched SmolLM2 curve with its controls at k₂, from an empty rankings cache: wall time.
4. CAN ranking on SmolLM2 vs a plain forward+backward (parameter gradients on) of the same batches.
5. The harness's `pcicn` ranking vs the PCICN authors' stage-1 script on the same model, text, σ and K (small K),
   each in its own process: wall time and peak memory. Needs a checkout of their repository (--authors-repo).

Usage: python benchmarks/bench_figures.py [--authors-repo PATH] [--authors-k 2] [--max-new-tokens 64]
       [--parallel 3] [--repeats 3] [--skip search,evaluation,curve,ranking,authors]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from bench_core import plain_forward_backward, side_by_side
from bench_real import curve_rows
from bench_search import Configuration, timed_search
from tabulate import tabulate

from harness.core.paths import default_cache_dir
from harness.data.texts import BUILTIN_CATEGORY, BUILTIN_PARAGRAPH
from harness.models.captioning import generate_captions, score_captions
from harness.models.loading import resolve_checkpoint_folder
from harness.models.registry import get_model_spec
from harness.runner.experiment import TOP_K_ZERO
from harness.runner.probe import Masking
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.science.ranking import importance

SECTIONS = ("search", "evaluation", "curve", "ranking", "authors")
TEXT_MODEL, SITE = "smollm2-135m", "lm.down_proj"


@dataclasses.dataclass(frozen=True)
class Figure:
    what: str
    measured: str
    target: str
    met: bool | None  # None: no target, or not measured


def search_section(args) -> list[Figure]:
    """Sequential vs k-parallel searches, each configuration in a fresh session (rankings cached on disk)."""
    search_args = argparse.Namespace(
        cache_dir=args.cache_dir, max_new_tokens=args.max_new_tokens, k_max=HarnessSettings().k_max, site=SITE
    )
    rows, figures = [], []
    for model in ("synth-llava", "smol-llava", TEXT_MODEL):
        runs = {
            parallel: timed_search(search_args, model, Configuration(str(parallel), parallel))
            for parallel in (1, args.parallel)
        }
        (sequential, seconds_1), (parallel, seconds_p) = runs[1], runs[args.parallel]
        same = (sequential.k1, sequential.k2) == (parallel.k1, parallel.k2)
        for width, (result, seconds) in runs.items():
            rows.append([model, width, result.k1, result.k2, result.evaluations, len(result.rounds),
                         f"{seconds:.1f} s", result.monotone])  # fmt: skip
        figures.append(
            Figure(
                f"search {model}: sequential / k-parallel P={args.parallel}",
                f"{seconds_1 / seconds_p:.2f}×" + ("" if same else " (different k₁, k₂)"),
                "≥ 2× with the same k₁, k₂",
                same and seconds_1 / seconds_p >= 2,
            )
        )
    headers = ["model", "ks a pass", "k₁", "k₂", "evaluations", "passes", "wall time", "monotone"]
    print(f"1. threshold search, {SITE}, captions ≤ {args.max_new_tokens} tokens")
    print(tabulate(rows, headers=headers, tablefmt="github"), "\n", flush=True)
    return figures


def evaluation_section(args) -> list[Figure]:
    rows, figures = [], []
    for model in ("smol-llava", "synth-llava"):
        timings, stage = evaluation_timings(args, model)
        alone = timings["masked generate alone (from pixels)"]
        rows.extend(
            [model, name, f"{seconds:.2f} s", f"{seconds / alone:.2f}"] for name, seconds in timings.items()
        )
        ratio = timings["one evaluation (harness)"] / alone
        figures.append(
            Figure(f"evaluation {model} (k={args.k}, stage {stage}) / its masked generate", f"{ratio:.2f}×",
                   "≤ 1.1×", ratio <= 1.1)
        )  # fmt: skip
    print(f"2. one evaluation ({SITE}, circle, 8 images, captions ≤ {args.max_new_tokens} tokens), median of "
          f"{args.repeats}")  # fmt: skip
    print(tabulate(rows, headers=["model", "what", "time", "/ generate"], tablefmt="github"), "\n", flush=True)
    return figures


def evaluation_timings(args, model: str) -> tuple[dict[str, float], int]:
    """One evaluation at k against its parts, interleaved; prefixes and image features computed before timing."""
    settings = HarnessSettings(
        cache_dir=args.cache_dir, device="cpu", dtype="float32", max_new_tokens=args.max_new_tokens
    )
    experiment, category = HarnessSession(settings).experiment(model), "circle"
    loaded, samples, site = experiment.loaded, experiment.samples(category), experiment.site(SITE)
    stage = experiment.measure(SITE, category, args.k).stage  # ranking, baseline, prefixes, image features
    chosen = experiment.selection(SITE, category, args.k, TOP_K_ZERO)
    masking = Masking(site, (chosen,), mode=settings.mask_mode)
    mask = masking.mask
    captions = experiment.probe.observe(category, masking)[0].captions
    kwargs = dict(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)

    def generate_alone() -> None:
        with mask:
            generate_captions(loaded, samples, **kwargs)

    timings = side_by_side(
        {
            "masked generate alone (from pixels)": generate_alone,
            "one evaluation (harness)": lambda: experiment.measure(SITE, category, args.k),
            "reference scoring, after cached prefixes": lambda: experiment.reference_nll(category, captions),
            "reference scoring, whole sequences (before)": lambda: score_captions(
                loaded, samples, captions, batch_size=settings.batch_size
            ),
        },
        args.repeats,
        loaded.device,
    )
    return timings, stage


def curve_section() -> list[Figure]:
    (row,) = curve_rows([TEXT_MODEL], ["can"])
    seconds = float(row[-1].removesuffix(" s"))
    headers = ["model", "ranking", "k₁", "k₂", "evaluations", "controls at k₂", "wall time"]
    print("3. one searched curve with its controls (ranking included), built-in paragraph")
    print(tabulate([row], headers=headers, tablefmt="github"), "\n", flush=True)
    return [Figure(f"{TEXT_MODEL} searched curve + controls", f"{seconds:.0f} s", "≤ 120 s", seconds <= 120)]


def ranking_section(args) -> list[Figure]:
    settings = HarnessSettings(cache_dir=args.cache_dir, device="cpu", dtype="float32")
    experiment = HarnessSession(settings).experiment(TEXT_MODEL)
    loaded, site = experiment.loaded, experiment.site(SITE)
    prompts, targets = experiment.ranking_data(BUILTIN_CATEGORY)
    timings = side_by_side(
        {
            "plain forward+backward": lambda: plain_forward_backward(
                loaded, prompts, targets, settings.batch_size
            ),
            "CAN ranking": lambda: importance(
                loaded, site, prompts, targets, options=settings.ranking, batch_size=settings.batch_size
            ),
        },
        args.repeats,
        loaded.device,
    )
    ratio = timings["CAN ranking"] / timings["plain forward+backward"]
    rows = [[name, f"{seconds:.2f} s"] for name, seconds in timings.items()]
    print(f"4. CAN ranking vs a plain forward+backward, {TEXT_MODEL}, {SITE}, built-in paragraph")
    print(tabulate(rows, headers=["what", "time"], tablefmt="github"), "\n", flush=True)
    return [Figure(f"CAN ranking {TEXT_MODEL} / plain forward+backward", f"{ratio:.2f}×", "≤ 1.0×", ratio <= 1.0)]


HARNESS_STAGE_1 = """
import sys, torch
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings
from harness.data.texts import BUILTIN_CATEGORY
torch.set_num_threads({threads})
settings = HarnessSettings.from_options(
    {{"cache_dir": sys.argv[1], "device": "cpu", "dtype": "float32", "method": "pcicn", "noise_samples": {k},
     "seed": 42, "noise_sigma": 5.0}}
)
HarnessSession(settings).experiment("{model}").ranking("lm.all_linear", BUILTIN_CATEGORY)
"""


# Their script runs as it is, after `import harness`: this environment's CPU torch and torchvision need the
# harness's import fix before transformers loads (their imports fail without it, as anyone's would here).
RUN_WITH_TORCHVISION_FIX = (
    "import runpy, sys, harness; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def measured_process(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak resident GiB) of one child process, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed:\n{process.stderr.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20  # KiB on Linux


# Their loading, for GPUs (float16, spread over every GPU by accelerate), made to load in float32 on the CPU; the
# rest of their script is run as it is.
CPU_LOADING = {
    "torch_dtype=torch.float16": "torch_dtype=torch.float32",
    'device_map="auto"': 'device_map="cpu"',
    'max_memory={i: "80GB" for i in range(self.num_gpus)}': "max_memory=None",
}


def authors_script(repo: Path) -> Path:
    return repo / "method" / "1_importance_evaluation.py"


def authors_section(args) -> list[Figure]:
    """The authors' stage 1 vs the harness's ranking of the same module pool (every attention and MLP Linear:
    `lm.all_linear`)."""
    if args.authors_repo is None:
        print(
            "5. skipped: pass --authors-repo PATH, a checkout of github.com/qqqqqqqzx/The-Achilles-Heel-of-LLMs\n"
        )
        return [Figure("pcicn ranking vs the authors' stage 1", "not run (no --authors-repo)", "", None)]
    script = authors_script(args.authors_repo)
    source = script.read_text()
    for theirs, ours in CPU_LOADING.items():
        if theirs not in source:
            raise SystemExit(f"{script} no longer has {theirs!r}, which the benchmark replaces: see what changed")
        source = source.replace(theirs, ours)
    checkpoint = resolve_checkpoint_folder(get_model_spec(TEXT_MODEL), args.cache_dir)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="can-bench-") as folder:
        work = Path(folder)
        (work / "stage1.py").write_text(source)
        theirs = measured_process(
            [sys.executable, "-c", RUN_WITH_TORCHVISION_FIX, "stage1.py", "--model_path", str(checkpoint),
             "--input_text", BUILTIN_PARAGRAPH,
             "--noise_scale", "5", "--num_samples", str(args.authors_k), "--seed", "42"],
            work,
        )  # fmt: skip
        (work / "cache").mkdir()
        (work / "cache" / "checkpoints").symlink_to(Path(args.cache_dir) / "checkpoints")
        code = HARNESS_STAGE_1.format(threads=threads, k=args.authors_k, model=TEXT_MODEL)
        ours = measured_process([sys.executable, "-c", textwrap.dedent(code), str(work / "cache")], work)
    rows = [["authors' stage 1", f"{theirs[0]:.0f} s", f"{theirs[1]:.1f} GiB"],
            ["harness pcicn, lm.all_linear", f"{ours[0]:.0f} s", f"{ours[1]:.1f} GiB"]]  # fmt: skip
    print(f"5. PCICN stage 1 on {TEXT_MODEL}, built-in paragraph, σ = 5, K = {args.authors_k}, one process each "
          f"(loading included), {threads} threads")  # fmt: skip
    print(tabulate(rows, headers=["what", "wall time", "peak memory"], tablefmt="github"), "\n", flush=True)
    return [
        Figure("pcicn ranking: authors' time / harness's", f"{theirs[0] / ours[0]:.1f}×", "", None),
        Figure("pcicn ranking: authors' peak memory / harness's", f"{theirs[1] / ours[1]:.1f}×", "", None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-repo", type=Path, help="a checkout of the PCICN authors' repository")
    parser.add_argument("--authors-k", type=int, default=2, help="noise samples K for section 5")
    parser.add_argument("--max-new-tokens", type=int, default=HarnessSettings().max_new_tokens)
    parser.add_argument("--parallel", type=int, default=3, help="ks a pass of the k-parallel search")
    parser.add_argument("--k", type=int, default=2, help="neurons masked in section 2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {', '.join(SECTIONS)}")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args()
    skipped = {name for name in args.skip.split(",") if name}
    if unknown := sorted(skipped - set(SECTIONS)):
        parser.error(f"--skip {args.skip!r}: unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    if args.authors_repo is not None and not authors_script(args.authors_repo).is_file():
        parser.error(f"--authors-repo {args.authors_repo}: no {authors_script(Path())} in it")
    torch.set_num_threads(2)
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n", flush=True)
    sections = {
        "search": lambda: search_section(args),
        "evaluation": lambda: evaluation_section(args),
        "curve": curve_section,
        "ranking": lambda: ranking_section(args),
        "authors": lambda: authors_section(args),
    }
    figures = []
    for name, run in sections.items():
        if name not in skipped:
            print(f"[{name}: measuring …]", flush=True)
            figures.extend(run())
    met = {True: "yes", False: "NO", None: ""}
    print("every ratio against its target")
    rows = [[f.what, f.measured, f.target, met[f.met]] for f in figures]
    print(tabulate(rows, headers=["figure", "measured", "target", "met"], tablefmt="github"))


if __name__ == "__main__":
    main()
