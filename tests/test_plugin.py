"""The pytest plugin end to end: the real collapse cases, selection, xdist, option errors and case misuse.

Every run goes through pytester with the plugin active via its `pytest11` entry point, on CPU in float32, on a
restricted grid (lm.down_proj × circle, square × k ≤ 4) and one shared cache so the tiny model is built and ranked
once.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import open_clip
import pytest
import torch
import transformers

from harness.data.world import write_category_folders

pytest_plugins = ["pytester"]

CASES = Path(__file__).resolve().parents[1] / "cases" / "test_collapse.py"
# The real cases file lists the trained default; the plugin's own tests run its grid on the random tiny model,
# which costs milliseconds per point (and exercises --can-models overriding a case's model list), on 4 of the 8
# default images per category.
MODELS = ("--can-models", "tiny-llava,llava-1.5-7b")
FEW_IMAGES = ("--can-max-images", "4")
GRID = (
    *MODELS,
    *FEW_IMAGES,
    "--can-sites",
    "lm.down_proj",
    "--can-categories",
    "circle,square",
    "--can-k-max",
    "4",
    "--can-max-new-tokens",
    "8",
)
CATEGORIES = ("circle", "square")
KS = (0, 1, 2, 4)
TINY_IDS = [f"tiny-llava-lm.down_proj-{c}-k{k}" for c in CATEGORIES for k in KS]
LLAVA_IDS = [f"llava-1.5-7b-lm.down_proj-{c}-k{k}" for c in CATEGORIES for k in KS]
ONE_CELL = (*FEW_IMAGES, "--can-categories", "circle", "--can-k-max", "1", "--can-max-new-tokens", "8")
SITES = ["lm.gate_proj", "lm.up_proj", "lm.down_proj", "lm.mlp_hidden"]
CPU_FLOAT32 = ("--can-device", "cpu", "--can-dtype", "float32")  # whatever accelerator the machine has
GRID_MARK = '@pytest.mark.collapse_grid(models=["tiny-llava"], sites=["lm.down_proj"])'


@dataclass
class Run:
    """What a pytester run leaves behind, kept as plain data so several tests can share one run."""

    ret: int
    outcomes: dict[str, int]
    lines: list[str]
    report: dict | None
    csv_rows: list[dict] | None
    report_dir: Path


def summary_table(lines: list[str]) -> list[str]:
    """The markdown table printed under the "critical-neuron collapse" section."""
    start = next(i for i, line in enumerate(lines) if "critical-neuron collapse (" in line)
    return list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 1 :]))


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


@pytest.fixture(scope="module", autouse=True)
def modules_imported_before_pytester(experiment):
    """pytester's in-process runs drop every module first imported during the run, so later imports make second
    copies of transformers' model and processor classes; loading the tiny model here first keeps one copy."""


@pytest.fixture(scope="module")
def shared_runs() -> dict[str, Run]:
    return {}


@pytest.fixture
def run_cases(pytester: pytest.Pytester, cache_dir: Path, shared_runs: dict[str, Run]):
    """Run pytest on a copy of cases/test_collapse.py (or a given case file) with the shared cache."""
    pytester.makepyfile(test_collapse=CASES.read_text())

    def run(*args: str, subprocess: bool = False, key: str | None = None) -> Run:
        if key is not None and key in shared_runs:
            return shared_runs[key]
        report_dir = pytester.path / f"reports-{key or 'run'}"
        full = ("-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-report-dir", str(report_dir))
        full += CPU_FLOAT32
        runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest
        result = runner(*full, *args)
        json_path, csv_path = report_dir / "collapse.json", report_dir / "collapse.csv"
        csv_rows = None
        if csv_path.exists():
            with csv_path.open(newline="") as handle:
                csv_rows = list(csv.DictReader(handle))
        try:
            outcomes = result.parseoutcomes()
        except ValueError:  # a usage error stops pytest before its summary line
            outcomes = {}
        run = Run(
            ret=int(result.ret),
            outcomes=outcomes,
            lines=result.outlines + result.errlines,
            report=json.loads(json_path.read_text()) if json_path.exists() else None,
            csv_rows=csv_rows,
            report_dir=report_dir,
        )
        if key is not None:
            shared_runs[key] = run
        return run

    return run


@pytest.fixture
def serial(run_cases) -> Run:
    return run_cases(*GRID, "-rs", key="serial")


@pytest.fixture
def parallel(run_cases) -> Run:
    return run_cases(*GRID, "-n", "2", "-v", subprocess=True, key="xdist")


def test_serial_run_passes_and_prints_one_row_per_curve(serial):
    """The real cases pass on the tiny model and the summary has one row per (model, site, category)."""
    assert serial.ret == 0, "\n".join(serial.lines)
    assert serial.outcomes == {"passed": 8, "skipped": 8}
    title = r"=+ critical-neuron collapse \(CAN, α=1, mean over all positions\) =+"
    assert any(re.search(title, s) for s in serial.lines)
    header, separator, *rows = summary_table(serial.lines)
    assert cells(header)[:4] == ["model", "site", "category", "n"]
    assert cells(header)[-2:] == ["k grid", "notes"]
    assert set(separator) <= {"|", "-"}
    assert [cells(row)[:4] for row in rows] == [["tiny-llava", "lm.down_proj", c, "4"] for c in CATEGORIES]
    assert all(cells(row)[-2] == "0…4 (4 pts)" for row in rows)
    assert any(re.fullmatch(r"reports: \S+/collapse\.json  \S+/collapse\.csv", line) for line in serial.lines)


def test_serial_run_writes_json_with_provenance_and_points(serial):
    """collapse.json carries library versions, git commit and command, and every point with its options."""
    meta = serial.report["meta"]
    assert meta["harness"] == version("can-harness")
    assert meta["torch"] == torch.__version__
    assert meta["transformers"] == transformers.__version__
    assert meta["open_clip"] == open_clip.__version__
    assert "git_commit" in meta
    assert "--can-sites lm.down_proj" in meta["command"]
    assert "--can-categories circle,square" in meta["command"]
    points = serial.report["points"]
    assert [(p["model"], p["category"], p["k"]) for p in points] == [
        ("tiny-llava", c, k) for c in CATEGORIES for k in KS
    ]
    for point in points:
        assert point["site"] == "lm.down_proj"
        assert point["stage"] in (0, 1, 2)
        assert len(point["captions"]) == 4 and all(isinstance(c, str) for c in point["captions"])
        options = point["options"]
        assert options["alpha"] == 1.0
        assert options["clip_model"] == "tiny-clip@1"
        assert point["provenance"]["checkpoint"] == "embedded:tiny-llava@v2"
        assert "clip" not in options  # renamed: it clashed with the point's CLIP score in the CSV
        assert options["max_new_tokens"] == 8
        assert options["stage1_ppl_ratio"] == 2.0
        assert options["stage2_log10_ppl_ratio"] == 1.0
    assert [p["stage"] for p in points if p["k"] == 0] == [0, 0]


def test_serial_run_writes_csv_with_one_row_per_point(serial):
    """collapse.csv has one row per point, options flattened into columns, captions left out."""
    rows = serial.csv_rows
    assert [(r["model"], r["category"], r["k"]) for r in rows] == [
        ("tiny-llava", c, str(k)) for c in CATEGORIES for k in KS
    ]
    columns = {"stage", "log10_ppl", "log10_ppl_baseline", "clip", "clip_chance", "alpha", "stage1_ppl_ratio"}
    assert columns | {"weights", "code"} <= set(rows[0])
    assert not {"captions", "options", "provenance", "metrics", "baselines"} & set(rows[0])
    by_key = {(p["category"], p["k"]): p for p in serial.report["points"]}
    assert all(int(r["stage"]) == by_key[(r["category"], int(r["k"]))]["stage"] for r in rows)


def test_unavailable_model_is_skipped_with_how_to_fix(serial):
    """llava-1.5-7b cases skip with a reason naming the HF id and the three ways to make it available."""
    skipped = [line for line in serial.lines if line.startswith("SKIPPED [8]")]
    assert len(skipped) == 1, "\n".join(serial.lines)
    reason = skipped[0]
    assert "llava-hf/llava-1.5-7b-hf" in reason
    assert "hf download llava-hf/llava-1.5-7b-hf" in reason
    assert "--can-model-path llava-1.5-7b=" in reason
    assert "--can-allow-download" in reason
    assert f"local Hugging Face cache {os.environ['HF_HUB_CACHE']}." in reason  # the tests' empty cache


def collected_ids(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := re.search(r"::test_collapse\[([^\]]+)\]", line))]


def test_keyword_selects_cases_by_id(run_cases):
    """-k matches the model-site-category-k ids: `llava` takes both models, `tiny-llava` only the tiny one."""
    both = run_cases(*GRID, "--collect-only", "-q", "-k", "llava")
    assert collected_ids(both.lines) == TINY_IDS + LLAVA_IDS
    tiny = run_cases(*GRID, "--collect-only", "-q", "-k", "tiny-llava and circle")
    assert collected_ids(tiny.lines) == TINY_IDS[:4]


def test_xdist_run_matches_serial_run(serial, parallel):
    """Under -n 2 the summary table is identical and the same points (k, stage, captions) are reported."""
    assert parallel.ret == 0, "\n".join(parallel.lines)
    assert parallel.outcomes == {"passed": 8, "skipped": 8}
    assert summary_table(parallel.lines) == summary_table(serial.lines)

    def points(run: Run) -> list[tuple]:
        return [(p["model"], p["category"], p["k"], p["stage"], p["captions"]) for p in run.report["points"]]

    assert points(parallel) == points(serial)


def test_xdist_runs_each_model_on_one_worker(parallel):
    """Under -n the harness's scheduler keeps all cases of one model on the same worker."""
    workers: dict[str, set[str]] = {}
    for line in parallel.lines:
        match = re.search(r"\[(gw\d+)\].*::test_collapse\[([^\]]+)\]", line)
        if match:
            model = "tiny-llava" if match.group(2).startswith("tiny-llava") else "llava-1.5-7b"
            workers.setdefault(model, set()).add(match.group(1))
    assert {model: len(gws) for model, gws in workers.items()} == {"tiny-llava": 1, "llava-1.5-7b": 1}, workers


@pytest.mark.parametrize(
    ("args", "named", "valid"),
    [
        (("--can-sites", "lm.bogus"), "'lm.bogus'", SITES),
        (("--can-categories", "nope"), "'nope'", ["circle", "cross", "square", "triangle"]),
        (("--can-models", "nosuch"), "'nosuch'", ["instructblip-vicuna-7b", "llava-1.5-7b", "tiny-llava"]),
    ],
    ids=["site", "category", "model"],
)
def test_unknown_name_fails_collection_listing_valid_ones(run_cases, args, named, valid):
    """An unknown site, category or model stops the run with one line naming it and every valid choice."""
    run = run_cases(*args)
    assert run.ret == pytest.ExitCode.INTERRUPTED
    assert "passed" not in run.outcomes
    lines = [line for line in run.lines if named in line and all(name in line for name in valid)]
    assert lines, "\n".join(run.lines)


@pytest.mark.parametrize(
    "args", [("--can-alpha", "2"), ("--can-model-path", "badformat")], ids=["alpha", "model-path"]
)
def test_malformed_option_is_a_usage_error(run_cases, args):
    """Values the plugin cannot build settings from are usage errors (exit code 4) naming the value."""
    run = run_cases(*args)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert any(line.startswith("ERROR: harness option:") and args[1] in line for line in run.lines), run.lines


def test_bad_image_folder_names_every_bad_file(run_cases, pytester):
    """--can-images with a corrupt PNG and a text file fails collection naming both files."""
    folder = pytester.path / "bad-images" / "circle"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG not really an image")
    (folder / "notes.txt").write_text("shapes drawn by hand\n")
    run = run_cases("--can-images", str(folder.parent))
    assert run.ret == pytest.ExitCode.INTERRUPTED
    text = "\n".join(run.lines)
    assert "2 problem(s) in image folder" in text, text
    assert re.search(r"broken\.png: corrupt image", text), text
    assert re.search(r"notes\.txt: not an image", text), text


def test_case_that_leaves_model_modified_errors(run_cases, pytester):
    """Zeroing a weight row in place without restoring it turns the case into an error at teardown."""
    pytester.makepyfile(
        test_leaky=f"""
        import pytest

        {GRID_MARK}
        def test_leaky(collapse_curve, k):
            model = collapse_curve.experiment.loaded.model
            weights = dict(model.named_parameters())
            weights["model.language_model.layers.0.mlp.down_proj.weight"][0].zero_()
        """
    )
    run = run_cases("test_leaky.py", *ONE_CELL)
    assert run.outcomes == {"passed": 2, "errors": 2}
    assert any("ERROR at teardown of test_leaky[tiny-llava-lm.down_proj-circle-k0]" in s for s in run.lines)
    assert any("tiny-llava was left modified" in line for line in run.lines), run.lines


def test_failed_assertion_shows_the_curve(run_cases, pytester):
    """assert_ppl_blowup failing prints the case label and the curve table measured so far."""
    pytester.makepyfile(
        test_impossible=f"""
        import pytest
        from harness.runner.assertions import assert_ppl_blowup

        {GRID_MARK}
        def test_impossible(collapse_curve, k):
            collapse_curve.measure(k)
            assert_ppl_blowup(collapse_curve, k, min_log10_ratio=100)
        """
    )
    run = run_cases("test_impossible.py", *ONE_CELL, "-k", "k1")
    assert run.outcomes == {"failed": 1, "deselected": 1}
    text = "\n".join(run.lines)
    assert "AssertionError: tiny-llava / lm.down_proj / circle: Δlog10 PPL at k=1 is " in text
    assert "expected ≥ +100" in text
    assert re.search(r"^E\s+k\s+ref PPL\s+Δlog10 PPL\s+CLIP", text, re.MULTILINE), text


def test_curve_without_grid_marker_is_a_usage_error(run_cases, pytester):
    """Asking for `collapse_curve` in an unmarked test errors and tells the user to add collapse_grid."""
    pytester.makepyfile(test_unmarked="def test_unmarked(collapse_curve):\n    pass\n")
    run = run_cases("test_unmarked.py")
    assert run.outcomes == {"errors": 1}
    assert any("UsageError" in line and "collapse_grid" in line for line in run.lines), run.lines


# -- results: chance level, masked neurons, CSV columns, notes ----------------------------------------------------
def curve_points(run: Run, category: str) -> list[dict]:
    """The tiny model's points of one category, in k order."""
    return [p for p in run.report["points"] if p["model"] == "tiny-llava" and p["category"] == category]


def row_of(run: Run, category: str) -> list[str]:
    return next(cells(row) for row in summary_table(run.lines)[2:] if cells(row)[2] == category)


def test_chance_level_uses_every_other_category_on_every_point(serial):
    """Every point's chance is scored against the 12 images of the three other categories (cross and triangle
    included, though they are not selected); the baseline chance is the k = 0 chance on every point, and the
    summary shows it."""
    summary = {s["category"]: s for s in serial.report["summary"]}
    for category in CATEGORIES:
        points = curve_points(serial, category)
        assert [p["k"] for p in points] == list(KS)
        chance_at_0 = points[0]["chance"]["clip"]
        assert isinstance(chance_at_0, float)
        assert [p["baseline_chance"]["clip"] for p in points] == [chance_at_0] * len(KS)
        assert all(isinstance(p["chance"]["clip"], float) for p in points)
        assert summary[category]["baseline_chance"]["clip"] == chance_at_0
        assert float(row_of(serial, category)[6]) == pytest.approx(chance_at_0, abs=0.05)  # shown to 0.1


def test_points_record_the_masked_neurons_in_rank_order(serial, loaded):
    """k = 0 masks nothing; each k records (site, layer, channel, score) of its k neurons, a prefix of the larger
    k's list (the ranking is nested), distinct, inside the site, scores non-increasing, all from one ranking."""
    layers, width = loaded.text_config.num_hidden_layers, loaded.text_config.hidden_size
    for category in CATEGORIES:
        points = {p["k"]: p for p in curve_points(serial, category)}
        assert (points[0]["masked_neurons"], points[0]["ranking_key"]) == ([], None)
        largest = points[max(KS)]["masked_neurons"]
        assert [points[k]["masked_neurons"] for k in KS] == [largest[:k] for k in KS]
        assert {site for site, *_ in largest} == {"lm.down_proj"}
        assert len({(layer, channel) for _, layer, channel, _ in largest}) == max(KS)
        assert all(0 <= layer < layers and 0 <= channel < width for _, layer, channel, _ in largest)
        scores = [score for *_, score in largest]
        assert all(isinstance(score, float) for score in scores)
        assert scores == sorted(scores, reverse=True)
        assert len({points[k]["ranking_key"] for k in KS if k}) == 1


def test_csv_keeps_the_clip_score_and_the_clip_model_apart(serial):
    """The CSV's `clip` column is the point's CLIP score (a float, not the CLIP model's label, which lives in
    `clip_model`); the checkpoint and the masked neurons are columns too."""
    points = {(p["category"], p["k"]): p for p in serial.report["points"]}
    assert len(serial.csv_rows) == len(points)
    for row in serial.csv_rows:
        point = points[(row["category"], int(row["k"]))]
        assert float(row["clip"]) == point["metrics"]["clip"]
        assert float(row["clip_chance"]) == point["chance"]["clip"]
        assert row["clip_model"] == "tiny-clip@1"
        assert row["checkpoint"] == "embedded:tiny-llava@v2"
        assert json.loads(row["masked_neurons"]) == point["masked_neurons"]


def test_notes_column_flags_what_the_points_show(serial):
    """`notes` says non-monotone when a stage falls as k grows, and CLIP₀ ≤ chance when the baseline CLIP score
    does not beat the chance level (derived here from the JSON points)."""
    for category in CATEGORIES:
        points = curve_points(serial, category)
        stages = [p["stage"] for p in points]
        expected = [] if all(a <= b for a, b in itertools.pairwise(stages)) else ["non-monotone"]
        if points[0]["baselines"]["clip"] <= points[0]["baseline_chance"]["clip"]:
            expected.append("CLIP₀ ≤ chance")
        assert row_of(serial, category)[-1] == "; ".join(expected)


SELECTION_FREE = (
    *MODELS,
    *FEW_IMAGES,
    "--can-sites",
    "lm.down_proj",
    "--can-k-max",
    "4",
    "--can-max-new-tokens",
    "8",
)


def test_chance_and_thresholds_do_not_depend_on_the_category_selection(serial, run_cases):
    """circle's summary row and points are identical whether circle is selected alone, with square, or not
    selected at all (every category, cases picked with -k): the image set always holds every category."""
    alone = run_cases(*SELECTION_FREE, "--can-categories", "circle", key="circle-alone")
    everything = run_cases(*SELECTION_FREE, "-k", "tiny-llava and circle", key="every-category")
    for run in (alone, everything):
        assert run.ret == 0, "\n".join(run.lines)
        assert run.outcomes["passed"] == 4
        assert {p["category"] for p in run.report["points"]} == {"circle"}

    def measured(run: Run) -> list[tuple]:
        keys = (
            "k",
            "chance",
            "baseline_chance",
            "stage",
            "masked_neurons",
            "ranking_key",
        )
        return [tuple(p[key] for key in keys) for p in curve_points(run, "circle")]

    assert row_of(alone, "circle") == row_of(everything, "circle") == row_of(serial, "circle")
    assert measured(alone) == measured(everything) == measured(serial)


# -- CLIP options ---------------------------------------------------------------------------------------------
def test_named_clip_model_defaults_to_openai_and_skips_when_not_cached(run_cases):
    """--can-clip-model ViT-B-32 alone means ViT-B-32/openai (never a random CLIP); with the tests' empty HF
    cache its weights are missing, so the tiny model's cases skip saying so and no report is written."""
    run = run_cases(*MODELS, "--can-sites", "lm.down_proj", *ONE_CELL, "--can-clip-model", "ViT-B-32", "-rs")
    assert run.ret == 0, "\n".join(run.lines)
    assert run.outcomes == {"skipped": 4}
    skipped = [line for line in run.lines if line.startswith("SKIPPED [2]") and "CLIP ViT-B-32/openai" in line]
    assert len(skipped) == 1, "\n".join(run.lines)
    assert "are not cached on this machine" in skipped[0]
    assert "--can-clip-model local-dir:" in skipped[0]
    assert run.report is None
    assert not any("critical-neuron collapse (CAN" in line for line in run.lines)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--can-clip-model", "bogus"), "unknown open_clip model 'bogus'"),
        (("--can-clip-model", "ViT-B-32", "--can-clip-pretrained", "no-such-tag"), "'no-such-tag'"),
        (("--can-clip-pretrained", "openai"), "--can-clip-pretrained needs --can-clip-model"),
        (("--can-device", "gpu0"), "invalid device 'gpu0'"),
        (("--can-k-factor", "nan"), "k_factor must be a finite number > 1"),
        (("--can-stage1-ppl-ratio", "inf"), "stage1_ppl_ratio must be a finite number, got inf"),
        pytest.param(
            ("--can-device", "cuda"), "device 'cuda': this machine has no usable CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (("--can-device", "cuda:7", "--can-dtype", "float32"), "device 'cuda:7': this machine has"),
        (("--can-model-path", "tiny-llava=no/such/folder"), "tiny-llava=no/such/folder: no/such/folder does not"),
        (("--can-baseline", "missing.json"), "--can-baseline missing.json: no such file; record one first"),
        (("--can-baseline", "broken.json"), "baseline file broken.json is unreadable"),
        (("--can-max-image-pixels", "0"), "max_image_pixels must be ≥ 1, got 0"),
        (("--can-device-map", "everywhere"), "device map 'everywhere': expected one of auto, balanced"),
        pytest.param(
            ("--can-device", "auto", "--can-device-map", '{"lm_head": 1}'),
            "device 'cuda:1': this machine has no usable CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (("--can-max-memory", "cpu=1GiB"), "max_memory needs a device_map"),
    ],
    ids=[
        "clip-model", "clip-tag", "tag-alone", "device", "k-factor", "threshold", "no-gpu", "gpu-index",
        "model-path", "baseline-missing", "baseline-broken", "pixel-limit", "device-map", "device-map-gpu",
        "budget-alone",
    ],
)  # fmt: skip
def test_invalid_settings_are_usage_errors_at_startup(run_cases, pytester, args, named):
    """Settings the harness cannot run with stop pytest before collection (exit code 4), one line saying why."""
    (pytester.path / "broken.json").write_text('{"curves": {')
    run = run_cases(*args)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert "passed" not in run.outcomes and "skipped" not in run.outcomes
    assert any(line.startswith("ERROR: harness option:") and named in line for line in run.lines), run.lines


@pytest.mark.parametrize("option", ["--can-models", "--can-sites", "--can-categories", "--can-texts"])
@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_list_option_is_a_usage_error(run_cases, option, value):
    """`--can-models=` must not silently mean "every model the case lists"."""
    run = run_cases(f"{option}={value}")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    expected = f"argument {option}: expects a comma-separated list of at least one name"
    assert any(expected in line for line in run.lines), run.lines


def test_a_memory_budget_that_does_not_parse_is_named_by_argparse(run_cases):
    run = run_cases("--can-device", "auto", "--can-device-map", "auto", "--can-max-memory", "cpu:1GiB")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    expected = "argument --can-max-memory: max memory 'cpu:1GiB': expected DEVICE=SIZE"
    assert any(expected in line for line in run.lines), run.lines


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--can-dtype", "fp32"),
        ("--can-positions", "first"),
        ("--can-mask-mode", "zero"),
        ("--can-dist-group", "gpu"),
    ],
)
def test_option_outside_its_choices_is_a_usage_error(run_cases, option, value):
    """Options with a fixed set of values reject others when the command line is parsed."""
    run = run_cases(option, value)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert any(re.search(rf"argument {option}: invalid choice: '?{value}'?", line) for line in run.lines), (
        run.lines
    )


# -- grid marker, image set, checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "got"), [('models=["tiny-llava"]', "['models']"), ('sites=["lm.down_proj"]', "['sites']")]
)
def test_grid_marker_needs_models_and_sites(run_cases, pytester, kwargs, got):
    """collapse_grid without models= or sites= fails collection with a UsageError naming what the marker needs
    and what it got."""
    pytester.makepyfile(
        test_half=f"""
        import pytest

        @pytest.mark.collapse_grid({kwargs})
        def test_half(collapse_curve, k):
            pass
        """
    )
    run = run_cases("test_half.py")
    assert run.ret == pytest.ExitCode.INTERRUPTED, run.lines  # a collection error: nothing runs
    assert "passed" not in run.outcomes
    text = "\n".join(run.lines)
    assert "pytest.UsageError: " in text, text
    assert "collapse_grid needs models=[...] and sites=[...]" in text, text
    assert f"got {got}" in text, text


def test_a_category_with_dashes_and_unicode_keeps_its_curve_whole(run_cases, pytester):
    """A category `café-k1`: pytest shows its case ids escaped (`caf\\xe9-k1-k0`), and each case is still matched
    to its own curve and k — a failed case is noted on its row alone, and every planned k is known."""
    root = write_category_folders(pytester.path / "images", per_category=4)
    (root / "circle").rename(root / "café-k1")
    pytester.makepyfile(
        test_unicode=f"""
        import pytest

        {GRID_MARK}
        def test_grid(collapse_curve, can_category, k):
            collapse_curve.measure(k)
            assert (can_category, k) != ("café-k1", 1), "planted failure"
        """
    )
    args = ("test_unicode.py", "--can-images", str(root), "--can-categories", "café-k1,square", "--can-k-max", "2")
    run = run_cases(*args, "--can-max-new-tokens", "8")
    assert run.outcomes == {"passed": 5, "failed": 1}, "\n".join(run.lines)
    assert "FAILED test_unicode.py::test_grid[tiny-llava-lm.down_proj-caf\\xe9-k1-k1]" in "\n".join(run.lines)
    notes = {cells(row)[2]: cells(row)[-1] for row in summary_table(run.lines)[2:]}
    assert notes.keys() == {"café-k1", "square"}, notes
    assert "1 case(s) FAILED" in notes["café-k1"] and "not measured" not in notes["café-k1"], notes
    assert "FAILED" not in notes["square"] and "not measured" not in notes["square"], notes
    assert run.report["meta"]["complete"] is True


def test_case_ids_that_would_not_parse_back_fail_collection_naming_them(run_cases, pytester):
    """A model listed twice gives two cases one id, which pytest would number apart; a search case's category
    ending like a k would read as a grid case. Both stop collection, naming the id or the category."""
    twice = run_cases("--can-models", "tiny-llava,tiny-llava", "--can-sites", "lm.down_proj", *ONE_CELL, "--co")
    assert twice.ret == pytest.ExitCode.INTERRUPTED
    expected = "two cases would have the id 'tiny-llava-lm.down_proj-circle-k0'"
    assert any(expected in line for line in twice.lines), twice.lines
    root = write_category_folders(pytester.path / "images", per_category=1)
    (root / "circle").rename(root / "run-k2")
    pytester.makepyfile(test_search=f"import pytest\n\n{SEARCH_MARK}\ndef test_search(can_category):\n    pass\n")
    search = run_cases("test_search.py", "--can-images", str(root), "--can-categories", "run-k2", "--co", "-q")
    assert search.ret == pytest.ExitCode.INTERRUPTED
    expected = "category 'run-k2' ends like a k: the search case 'tiny-llava-lm.down_proj-run-k2' would read as"
    assert any(expected in line for line in search.lines), search.lines


def test_session_uses_the_image_set_scanned_at_collection(run_cases, pytester):
    """The session fixture gets the very data sources collection scanned, their images holding every category
    even when only circle is selected."""
    pytester.makepyfile(
        test_shared=f"""
        import pytest
        from harness.plugin.stash import SOURCES

        {GRID_MARK}
        def test_grid(can_model, can_site, can_category, k):
            assert can_category == "circle"

        def test_shared(can_session, pytestconfig):
            assert can_session.sources is pytestconfig.stash[SOURCES]
            assert can_session.images.categories == ["circle", "cross", "square", "triangle"]
        """
    )
    run = run_cases("test_shared.py", "--can-categories", "circle", "--can-k-max", "1")
    assert run.outcomes == {"passed": 3}, "\n".join(run.lines)


@pytest.fixture
def scratch_registry(monkeypatch):
    """--can-model-path edits the (process-wide) registry: give in-process runs a copy that is thrown away."""
    from harness.models import registry

    registry.registered_models()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_corrupt_checkpoint_errors_while_an_incomplete_one_skips(run_cases, pytester, loaded, scratch_registry):
    """A present but unreadable model.safetensors makes the cases error (a regression run must not hide it); a
    folder without weights makes them skip as incomplete."""
    broken = Path(shutil.copytree(loaded.path, pytester.path / "broken"))
    (broken / "model.safetensors").write_bytes(random.Random(0).randbytes(4096))
    partial = pytester.path / "partial"
    partial.mkdir()
    shutil.copy(loaded.path / "config.json", partial / "config.json")
    cell = ("--can-models", "llava-1.5-7b", "--can-sites", "lm.down_proj", *ONE_CELL, "-rs")

    errors = run_cases(*cell, "--can-model-path", f"llava-1.5-7b={broken}")
    assert errors.outcomes == {"errors": 2}, "\n".join(errors.lines)
    assert any("SafetensorError" in line for line in errors.lines), "\n".join(errors.lines)
    assert not any("SKIPPED" in line for line in errors.lines)

    skips = run_cases(*cell, "--can-model-path", f"llava-1.5-7b={partial}")
    assert skips.outcomes == {"skipped": 2}, "\n".join(skips.lines)
    reason = next(line for line in skips.lines if line.startswith("SKIPPED [2]"))
    assert f"the checkpoint in {partial} is incomplete (missing model.safetensors" in reason


# -- xdist grouped by curve ---------------------------------------------------------------------------------------
@pytest.fixture
def parallel_by_curve(run_cases) -> Run:
    return run_cases(*GRID, "-n", "2", "-v", "--can-dist-group", "curve", subprocess=True, key="xdist-curve")


def test_xdist_grouped_by_curve_matches_serial_run(serial, parallel_by_curve):
    """--can-dist-group curve keeps each (model, site, category) curve on one worker, spreads the tiny model's
    two curves over both workers, and prints the same table and points as the serial run."""
    run = parallel_by_curve
    assert run.ret == 0, "\n".join(run.lines)
    assert run.outcomes == {"passed": 8, "skipped": 8}
    assert summary_table(run.lines) == summary_table(serial.lines)

    def points(run: Run) -> list[tuple]:
        return [(p["model"], p["category"], p["k"], p["stage"], p["captions"]) for p in run.report["points"]]

    assert points(run) == points(serial)
    workers: dict[str, set[str]] = {}
    for line in run.lines:
        match = re.search(r"\[(gw\d+)\].*::test_collapse\[([^\]]+)-k\d+\]", line)
        if match:
            workers.setdefault(match.group(2), set()).add(match.group(1))
    curves = [f"{model}-lm.down_proj-{c}" for model in ("tiny-llava", "llava-1.5-7b") for c in CATEGORIES]
    assert sorted(workers) == sorted(curves)
    assert all(len(gws) == 1 for gws in workers.values()), workers
    assert workers["tiny-llava-lm.down_proj-circle"] != workers["tiny-llava-lm.down_proj-square"], workers


# -- collapse_search: searched thresholds, controls and the threshold table -------------------------------------
SEARCH_MARK = '@pytest.mark.collapse_search(models=["tiny-llava"], sites=["lm.down_proj"])'
SEARCH_CELLS = (*FEW_IMAGES, "--can-categories", "circle,square", "--can-max-new-tokens", "8")


@pytest.fixture
def search_run(run_cases, pytester, shared_runs) -> Run:
    pytester.makepyfile(
        test_search=f"""
        import pytest
        from harness.runner.assertions import assert_collapses_within

        {SEARCH_MARK}
        def test_search(collapse_analysis):
            pass

        {SEARCH_MARK}
        def test_impossible(collapse_analysis):
            assert_collapses_within(collapse_analysis, 0)
        """
    )
    return run_cases("test_search.py", *SEARCH_CELLS, "--can-control-seeds", "2", key="search")


def test_search_cases_are_one_per_curve_and_fill_the_threshold_table(search_run):
    """collapse_search expands over model × site × category (ids without k) and prints one table row per curve
    with the searched thresholds and the controls at k₂."""
    assert search_run.outcomes == {"passed": 2, "failed": 2}, "\n".join(search_run.lines)
    text = "\n".join(search_run.lines)
    assert "two-stage thresholds (CAN, α=1, mean over all positions; adaptive search, controls at k₂)" in text
    rows = [line for line in search_run.lines if line.startswith("| tiny-llava")]
    assert [cells(row)[:3] for row in rows] == [["tiny-llava", "lm.down_proj", c] for c in CATEGORIES]
    assert "critical-neuron collapse (CAN" not in text  # no grid case ran: no grid table


def test_joint_site_is_one_curve_over_the_pooled_neurons(run_cases, pytester):
    """`--can-sites a+b` makes one curve per category whose k grid runs over both sites' neurons, and a search
    over it reports every masked neuron with its own site."""
    joint = "lm.down_proj+lm.gate_proj"
    grid = run_cases(
        *FEW_IMAGES, "--can-models", "tiny-llava", "--can-sites", joint, "--can-categories", "circle",
        "--can-k-max", "10000", "--collect-only", "-q",
    )  # fmt: skip
    ks = [int(case.rsplit("-k", 1)[1]) for case in collected_ids(grid.lines)]
    assert collected_ids(grid.lines)[0] == f"tiny-llava-{joint}-circle-k0"
    assert max(ks) == 128 + 256  # tiny-llava: 2 layers × 64 down_proj + 2 layers × 128 gate_proj channels
    pytester.makepyfile(
        test_search=f"""
        import pytest

        @pytest.mark.collapse_search(models=["tiny-llava"], sites=["{joint}"])
        def test_search(collapse_analysis):
            pass
        """
    )
    searched = run_cases(
        "test_search.py", *FEW_IMAGES, "--can-categories", "circle", "--can-max-new-tokens", "8",
        "--can-control-seeds", "1",
    )  # fmt: skip
    assert searched.outcomes == {"passed": 1}, "\n".join(searched.lines)
    (analysis,) = searched.report["analyses"]
    assert (analysis["site"], analysis["k_max"]) == (joint, 128 + 256)
    masked = [neuron for point in analysis["points"] for neuron in point["masked_neurons"]]
    assert {site for site, *_ in masked} <= {"lm.down_proj", "lm.gate_proj"} and masked
    if analysis["k2"] is not None:
        assert set(analysis["layers"]) == {"lm.down_proj", "lm.gate_proj"}


def test_search_reuses_the_points_grid_cases_measured(run_cases, pytester):
    """A grid case and a search case on one curve in one session: each k of the CAN curve is measured once, the
    search taking k = 0, 1, 2, 4 from the grid, and the grid table lists only the grid's own points."""
    pytester.makeconftest(
        """
        import json
        import pytest
        from harness.runner.experiment import Experiment

        from harness.runner.experiment import TOP_K_ZERO

        @pytest.fixture(scope="session", autouse=True)
        def count_can_measurements():
            calls, original = [], Experiment.measure_many

            def counting(self, site, category, variants, **options):
                calls.extend(k for k, intervention in variants if intervention == TOP_K_ZERO)
                return original(self, site, category, variants, **options)

            Experiment.measure_many = counting
            yield
            Experiment.measure_many = original
            with open("measured.json", "w") as handle:
                json.dump(calls, handle)
        """
    )
    pytester.makepyfile(
        test_both=f"""
        import pytest

        {GRID_MARK}
        def test_grid(collapse_curve, k):
            collapse_curve.measure(k)

        {SEARCH_MARK}
        def test_search(collapse_analysis):
            pass
        """
    )
    run = run_cases(
        "test_both.py", *FEW_IMAGES, "--can-categories", "circle", "--can-k-max", "4", "--can-max-new-tokens", "8"
    )
    assert run.outcomes == {"passed": 5}, "\n".join(run.lines)
    measured = json.loads((pytester.path / "measured.json").read_text())
    assert sorted(measured) == sorted(set(measured)) and {0, 1, 2, 4} <= set(measured)
    (analysis,) = run.report["analyses"]
    assert {k for k, _ in analysis["stages"]} == set(measured)
    assert [p["k"] for p in run.report["points"]] == [0, 1, 2, 4]


def test_a_case_parametrised_over_ranking_methods(run_cases, pytester):
    """`methods=[...]` adds the method to each case id and to every point; the table gains a ranking column; an
    unknown method fails collection naming the valid ones."""
    mark = '@pytest.mark.collapse_grid(models=["tiny-llava"], sites=["lm.down_proj"], methods=["can", "random"])'
    pytester.makepyfile(
        test_methods=f"""
        import pytest

        {mark}
        def test_methods(collapse_curve, can_method, k):
            point = collapse_curve.measure(k)
            assert point.options["method"] == can_method
        """
    )
    run = run_cases(
        "test_methods.py",
        *FEW_IMAGES,
        "--can-categories",
        "circle",
        "--can-k-max",
        "2",
        "--can-max-new-tokens",
        "8",
    )
    assert run.outcomes == {"passed": 6}, "\n".join(run.lines)
    rankings = {p["ranking"] for p in run.report["points"]}
    assert rankings == {"CAN, α=1, mean over all positions", "random, seed=0"}
    assert "critical-neuron collapse (several rankings)" in "\n".join(run.lines)
    table = summary_table(run.lines)
    assert cells(table[0])[:4] == ["model", "site", "ranking", "category"]
    assert sorted(cells(row)[2] for row in table[2:]) == sorted(rankings)
    collected = run_cases(
        "test_methods.py", "--can-categories", "circle", "--can-k-max", "1", "--collect-only", "-q"
    )
    assert [line.split("::")[-1] for line in collected.lines if "::" in line] == [
        f"test_methods[tiny-llava-lm.down_proj-{method}-circle-k{k}]"
        for method in ("can", "random")
        for k in (0, 1)
    ]
    pytester.makepyfile(
        test_methods=f"import pytest\n\n{mark.replace('random', 'saliency')}\ndef test_x(k):\n    pass\n"
    )
    bad = run_cases("test_methods.py", "--collect-only", "-q")
    assert (
        "unknown ranking method 'saliency'; valid choices: can, activation, gradient, pcicn, random"
        in "\n".join(bad.lines)
    )


def test_search_report_holds_thresholds_points_controls_and_layers(search_run):
    analyses = {a["category"]: a for a in search_run.report["analyses"]}
    assert set(analyses) == set(CATEGORIES)
    for analysis in analyses.values():
        evaluated = [k for k, _ in analysis["stages"]]
        assert [p["k"] for p in analysis["points"]] == sorted(evaluated)
        assert all(p["captions"] for p in analysis["points"])  # captions at every evaluated k
        assert analysis["evaluations"] == len(evaluated) - 1
        assert sorted(k for ks in analysis["passes"] for k in ks) == evaluated[1:]  # k = 0 is the baseline
        assert all(len(ks) == 1 for ks in analysis["passes"])  # --can-search-parallel's default on a CPU
        assert analysis["search"] == "adaptive"
        if analysis["k2"] is None:
            assert analysis["controls"] == [] and analysis["layers"] == {}
            continue
        assert len(analysis["controls"]) == 3  # 2 random seeds + mean ablation
        assert sum(analysis["layers"]["lm.down_proj"].values()) == analysis["k2"]
        assert analysis["controls_hold"] == all(c["stage"] < 2 for c in analysis["controls"])
    assert search_run.report["points"] == []  # searched points live in their analyses, not in the grid's list
    with (search_run.report_dir / "thresholds.csv").open(newline="") as handle:
        table = {row["category"]: row for row in csv.DictReader(handle)}
    for category, analysis in analyses.items():
        assert table[category]["evaluations"] == str(analysis["evaluations"])
        assert json.loads(table[category]["controls"]) == analysis["controls"]
        assert json.loads(table[category]["layers"]) == analysis["layers"]


def test_search_run_writes_one_png_plot_per_curve(search_run):
    plots = sorted((search_run.report_dir / "plots").iterdir())
    assert [p.name for p in plots] == [f"tiny-llava__lm.down_proj__{c}.png" for c in CATEGORIES]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and p.stat().st_size > 10_000 for p in plots)


def test_failed_search_assertion_shows_curve_and_controls(search_run):
    """The analysis is shared by both cases of a curve (computed once); the failing one prints the curve."""
    text = "\n".join(search_run.lines)
    assert "AssertionError: tiny-llava / lm.down_proj / circle: expected complete collapse by k=0" in text
    assert "curve and controls:" in text and "first caption" in text


def test_linear_search_option_and_its_validation(run_cases, pytester):
    pytester.makepyfile(
        test_linear=f"""
        import pytest

        {SEARCH_MARK}
        def test_linear(collapse_analysis):
            search = collapse_analysis.search
            assert search.mode == "linear"
            # the papers' scan: every k from 0 up to the first complete collapse (or k_max = 8)
            assert sorted(search.stages) == list(range((search.k2 or 8) + 1))
        """
    )
    run = run_cases("test_linear.py", *FEW_IMAGES, "--can-categories", "circle", "--can-k-max", "8",
                    "--can-search", "linear", "--can-control-seeds", "0")  # fmt: skip
    assert run.outcomes == {"passed": 1}, "\n".join(run.lines)
    bad = run_cases("test_linear.py", "--can-control-seeds", "-1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert any("control_seeds must be ≥ 0, got -1" in line for line in bad.lines), bad.lines


def test_a_case_cannot_use_both_markers(run_cases, pytester):
    pytester.makepyfile(
        test_both=f"""
        import pytest

        {SEARCH_MARK}
        {GRID_MARK}
        def test_both(collapse_analysis):
            pass
        """
    )
    run = run_cases("test_both.py", *ONE_CELL)
    assert any("use one of collapse_grid / collapse_search, not both" in line for line in run.lines), run.lines


def test_golden_real_weight_cases_skip_saying_what_is_missing(run_cases, pytester):
    """Without the checkpoints (and here without a GPU) the golden cases skip with the commands that fix it."""
    pytester.makepyfile(test_golden=(CASES.parent / "test_golden.py").read_text())
    run = run_cases("test_golden.py", "-rs")
    assert run.outcomes == {"skipped": 2}, "\n".join(run.lines)
    text = "\n".join(run.lines)
    for source in ("llava-hf/llava-1.5-7b-hf", "Salesforce/instructblip-vicuna-7b"):
        assert f"hf download {source}" in text
    if not torch.cuda.is_available():
        assert text.count("golden real-weight checks need a CUDA GPU") == 2


def test_a_site_the_family_lacks_is_skipped_saying_so(run_cases):
    """A case list may name sites of several families; for a model without that component the case skips with
    the sites its family does have."""
    run = run_cases(
        "--can-models", "tiny-llava", "--can-sites", "qformer.fc1", *FEW_IMAGES, "--can-categories", "circle",
        "--can-k-max", "1", "-rs",
    )  # fmt: skip
    assert run.outcomes == {"skipped": 2}, "\n".join(run.lines)
    assert "tiny-llava: llava models have no qformer.fc1 site (theirs: lm.gate_proj," in "\n".join(run.lines)
