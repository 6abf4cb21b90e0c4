"""The pytest plugin end to end: the real collapse cases, selection, xdist, option errors and case misuse.

Every run goes through pytester with the plugin active via its `pytest11` entry point, on a restricted grid
(lm.down_proj × circle, square × k ≤ 4) and one shared cache so the tiny model is built and ranked once.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import open_clip
import pytest
import torch
import transformers

pytest_plugins = ["pytester"]

CASES = Path(__file__).resolve().parents[1] / "cases" / "test_collapse.py"
GRID = (
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
ONE_CELL = ("--can-categories", "circle", "--can-k-max", "1", "--can-max-new-tokens", "8")
SITES = ["lm.gate_proj", "lm.up_proj", "lm.down_proj", "lm.mlp_hidden"]
GRID_MARK = '@pytest.mark.collapse_grid(models=["tiny-llava"], sites=["lm.down_proj"])'


@dataclass
class Run:
    """What a pytester run leaves behind, kept as plain data so several tests can share one run."""

    ret: int
    outcomes: dict[str, int]
    lines: list[str]
    report: dict | None
    csv_rows: list[dict] | None


def summary_table(lines: list[str]) -> list[str]:
    """The markdown table printed under the "critical-neuron collapse" section."""
    start = next(i for i, line in enumerate(lines) if "critical-neuron collapse (CAN" in line)
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
    assert any(re.search(r"=+ critical-neuron collapse \(CAN, α=1, positions=all\) =+", s) for s in serial.lines)
    header, separator, *rows = summary_table(serial.lines)
    assert cells(header)[:4] == ["model", "site", "category", "imgs"]
    assert set(separator) <= {"|", "-"}
    assert [cells(row)[:4] for row in rows] == [["tiny-llava", "lm.down_proj", c, "4"] for c in CATEGORIES]
    assert all(cells(row)[-1].startswith("0…4 (4 pts)") for row in rows)
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
        assert options["clip"] == "tiny-clip@1"
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
    assert {"stage", "log10_ppl_ratio", "clip", "alpha", "stage1_ppl_ratio"} <= set(rows[0])
    assert "captions" not in rows[0] and "options" not in rows[0]
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
        (("--can-categories", "nope"), "'nope'", ["circle", "square", "triangle"]),
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
        from harness.assertions import assert_ppl_blowup

        {GRID_MARK}
        def test_impossible(collapse_curve, k):
            collapse_curve.measure(k)
            assert_ppl_blowup(collapse_curve, k, min_log10_ratio=100)
        """
    )
    run = run_cases("test_impossible.py", *ONE_CELL, "-k", "k1")
    assert run.outcomes == {"failed": 1, "deselected": 1}
    text = "\n".join(run.lines)
    assert "AssertionError: tiny-llava / lm.down_proj / circle: reference PPL at k=1" in text
    assert "expected ≥ 10^100" in text
    assert re.search(r"^E\s+k\s+ref PPL\s+Δlog10 PPL\s+CLIP", text, re.MULTILINE), text


def test_curve_without_grid_marker_is_a_usage_error(run_cases, pytester):
    """Asking for `collapse_curve` in an unmarked test errors and tells the user to add collapse_grid."""
    pytester.makepyfile(test_unmarked="def test_unmarked(collapse_curve):\n    pass\n")
    run = run_cases("test_unmarked.py")
    assert run.outcomes == {"errors": 1}
    assert any("UsageError" in line and "collapse_grid" in line for line in run.lines), run.lines
