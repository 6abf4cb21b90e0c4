"""Reports are never lost and never lie: a bad report folder fails before the first case; SIGINT or SIGTERM
during a ranking or a masked point, a case that raises, a full disk — each leaves the last complete report
whole, writes this run's report marked incomplete beside it, and shows no threshold for a curve it did not
measure; the re-run gives the complete run's results. A read-only cache with valid entries runs to the end.

Runs go through pytester subprocesses (a real signal needs a process of its own) on the random tiny LLaVA,
lm.down_proj × circle, square × k ≤ 4, with a shared cache, so one run costs seconds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CASES = Path(__file__).resolve().parents[1] / "cases" / "test_collapse.py"
GRID = (
    "-p", "no:cacheprovider", "--can-models", "tiny-llava", "--can-max-images", "4", "--can-sites", "lm.down_proj",
    "--can-categories", "circle,square", "--can-k-max", "4", "--can-max-new-tokens", "8", "--can-device", "cpu",
    "--can-dtype", "float32",
)  # fmt: skip
CASE_IDS = [f"tiny-llava-lm.down_proj-{c}-k{k}" for c in ("circle", "square") for k in (0, 1, 2, 4)]

# Ctrl-C as in a terminal: a test runner started in the background (nohup, `&` in a script) passes SIGINT on as
# ignored, and Python then never raises KeyboardInterrupt.
TERMINAL_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"

# Sends SIGINT to this process from inside the N-th masked evaluation's forward pass (N from the environment).
SIGINT_IN_MASKED_POINT = (
    TERMINAL_SIGINT
    + """
import os, signal, torch
from harness.models import masking

N = int(os.environ["CAN_TEST_SIGINT_AT_MASK"])
state = {"masks": 0, "active": False, "sent": False}
enter, leave = masking.NeuronMask.__enter__, masking.NeuronMask.__exit__

def entering(self):
    result = enter(self)
    state["masks"] += 1
    state["active"] = True
    return result

def leaving(self, *exc):
    state["active"] = False
    return leave(self, *exc)

def forward_hook(module, inputs, output):
    if state["active"] and state["masks"] == N and not state["sent"]:
        state["sent"] = True
        os.kill(os.getpid(), signal.SIGINT)

masking.NeuronMask.__enter__, masking.NeuronMask.__exit__ = entering, leaving
torch.nn.modules.module.register_module_forward_hook(forward_hook)
"""
)

# Sends SIGINT once a ranking is computed, before the cache stores it.
SIGINT_IN_RANKING = (
    TERMINAL_SIGINT
    + """
import os, signal
from harness.runner import ranking_cache

original = ranking_cache.RankingCache.load_or_compute_many

def interrupted(self, entries, compute):
    def compute_then_interrupt(missing):
        scores = compute(missing)
        os.kill(os.getpid(), signal.SIGINT)
        return scores
    return original(self, entries, compute_then_interrupt)

ranking_cache.RankingCache.load_or_compute_many = interrupted
"""
)

# Every report write fails as on a full disk.
FULL_DISK = """
import errno
from harness.core import atomic_files

original = atomic_files.replacing

def full(path):
    if path.name in ("collapse.json", "collapse.csv"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return original(path)

atomic_files.replacing = full
"""


@pytest.fixture
def run(pytester: pytest.Pytester, cache_dir: Path, monkeypatch):
    """run(*args, env=..., cache=...) → (result, report folder); one report folder per test."""
    pytester.makepyfile(test_collapse=CASES.read_text())
    report_dir = pytester.path / "reports"

    def go(*args: str, cache: Path = cache_dir, env: dict[str, str] | None = None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        result = pytester.runpytest_subprocess(
            *GRID, "--can-cache-dir", str(cache), "--can-report-dir", str(report_dir), *args
        )
        return result, report_dir

    return go


def report_of(folder: Path) -> dict:
    return json.loads((folder / "collapse.json").read_text())


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    """Rows of the summary table by category: cells."""
    rows = {}
    for line in lines:
        if line.startswith("| tiny-llava"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[2]] = cells
    return rows


def test_a_report_folder_that_is_a_file_fails_before_any_case(run, pytester):
    """Found at start-up (usage error, exit 4), naming the file — not after every case ran."""
    blocker = pytester.path / "reports"
    blocker.write_text("a file where the report folder should be")
    result, _ = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = "\n".join(result.outlines + result.errlines)
    assert re.search(r"--can-report-dir: the report folder .*reports cannot be made: .*reports is a file", text)
    assert "passed" not in text and blocker.read_text().startswith("a file")


def test_a_report_folder_without_write_access_fails_before_any_case(pytester, cache_dir, run_read_only):
    """A folder this user cannot write (for real: write bits off, no capabilities) is a usage error at start-up."""
    pytester.makepyfile(test_collapse=CASES.read_text())
    locked = pytester.path / "locked"
    locked.mkdir()
    args = ["-m", "pytest", *GRID, "--can-cache-dir", str(cache_dir), "--can-report-dir", str(locked / "reports")]
    result = run_read_only(args, locked, cwd=pytester.path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"--can-report-dir: the report folder .*locked/reports cannot be written", result.stderr)
    assert "passed" not in result.stdout


def test_sigint_in_a_masked_point_keeps_the_last_complete_report(run, pytester):
    """Ctrl-C inside the third masked evaluation: exit 2; collapse.json is byte for byte the last complete run's;
    incomplete/collapse.json says why and lists the unmeasured cases; the table shows "?" and "not measured"
    for the curve cut short, never "none ≤ k"; the re-run reproduces the complete run."""
    complete, folder = run()
    assert complete.ret == 0, complete.outlines[-30:]
    before = (folder / "collapse.json").read_bytes()
    pytester.makeconftest(SIGINT_IN_MASKED_POINT)
    interrupted, _ = run(env={"CAN_TEST_SIGINT_AT_MASK": "3"})
    assert interrupted.ret == pytest.ExitCode.INTERRUPTED
    assert (folder / "collapse.json").read_bytes() == before
    meta = report_of(folder / "incomplete")["meta"]
    assert meta["complete"] is False
    assert meta["incomplete_reason"].startswith("interrupted")
    assert meta["unfinished_cases"] and all("tiny-llava-lm.down_proj" in case for case in meta["unfinished_cases"])
    text = "\n".join(interrupted.outlines)
    assert "INCOMPLETE RUN: interrupted" in text
    cut_short = [cells for cells in table_rows(interrupted.outlines).values() if "not measured: k" in cells[-1]]
    assert cut_short  # the complete run found no threshold up to k = 4: a cut-short curve must not claim one
    assert all(cells[7:9] == ["?", "?"] for cells in cut_short), cut_short
    (pytester.path / "conftest.py").unlink()
    again, _ = run()
    assert again.ret == 0
    assert report_of(folder)["summary"] == json.loads(before)["summary"]


def test_sigint_during_a_ranking_stores_no_entry(run, pytester, tmp_path):
    """Ctrl-C after a ranking is computed and before it is stored: no entry and no temporary file is left in
    the cache, and the next run computes it afresh and reports what a run on the warm cache reports."""
    fresh = tmp_path / "fresh-cache"
    pytester.makeconftest(SIGINT_IN_RANKING)
    interrupted, folder = run(cache=fresh)
    assert interrupted.ret == pytest.ExitCode.INTERRUPTED
    stored = [p for p in (fresh / "rankings").rglob("*") if not p.name.endswith(".lock")]
    assert stored == []
    assert not list(fresh.rglob("*.tmp"))
    (pytester.path / "conftest.py").unlink()
    cold, _ = run(cache=fresh)
    assert cold.ret == 0
    cold_summary = report_of(folder)["summary"]
    warm, _ = run()
    assert warm.ret == 0
    assert report_of(folder)["summary"] == cold_summary


def test_sigterm_ends_the_run_like_ctrl_c(run, pytester):
    """`kill` (SIGTERM) mid-run: the cases stop, and an incomplete report says so, instead of a silent death."""
    kill = "os.kill(os.getpid(), signal.SIGINT)"
    pytester.makeconftest(SIGINT_IN_MASKED_POINT.replace(kill, kill.replace("SIGINT", "SIGTERM")))
    result, report_dir = run(env={"CAN_TEST_SIGINT_AT_MASK": "2"})
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert report_of(report_dir / "incomplete")["meta"]["incomplete_reason"].startswith("interrupted (SIGTERM);")
    assert not (report_dir / "collapse.json").exists()


def test_a_case_that_raises_is_marked_and_its_k_not_shown_as_measured(run, pytester):
    """A case raising at k = 2 (not an assertion): the report is incomplete, the row says so and its thresholds
    are "?" unless found below k = 2; an assertion failing at k = 4 is a FAILED note on a complete curve."""
    pytester.makepyfile(
        test_faulty="""
        import pytest

        @pytest.mark.collapse_grid(models=["tiny-llava"], sites=["lm.down_proj"])
        def test_faulty(collapse_curve, k):
            if k == 2 and collapse_curve.category == "circle":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            collapse_curve.measure(k)
            assert not (k == 4 and collapse_curve.category == "square"), "domain check failed"
        """
    )
    result, folder = run("test_faulty.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    meta = report_of(folder / "incomplete")["meta"]
    assert meta["cases"] == {"passed": 6, "failed": 1, "error": 1, "skipped": 0, "unfinished": 0}
    assert [case.split("/")[-1] for case in meta["error_cases"]] == [
        "test_faulty.py::test_faulty[tiny-llava-lm.down_proj-circle-k2]"
    ]
    rows = table_rows(result.outlines)
    assert "1 case(s) raised an error" in rows["circle"][-1] and "not measured: k 2" in rows["circle"][-1]
    assert "1 case(s) FAILED" in rows["square"][-1] and "not measured" not in rows["square"][-1]
    summary = {row["category"]: row for row in report_of(folder / "incomplete")["summary"]}
    assert summary["circle"]["k_unmeasured"] == [2] and summary["square"]["k_unmeasured"] == []


def test_a_full_disk_while_reporting_is_a_clear_error_and_keeps_the_last_report(run, pytester):
    """ENOSPC from the report writer: exit 1, one line saying the report was not written and that the previous
    one is untouched, the tables still printed, and no temporary file left in the report folder."""
    complete, folder = run()
    assert complete.ret == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    pytester.makeconftest(FULL_DISK)
    result, _ = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = "\n".join(result.outlines)
    assert "REPORT NOT WRITTEN: the report could not be written" in text and "No space left" in text
    assert table_rows(result.outlines)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_a_read_only_cache_with_valid_entries_runs_to_the_end(run, pytester, cache_dir, tmp_path, run_read_only):
    """A lab's shared cache, read-only to this user, holding the built model and its rankings: the run passes
    and reports what a run with write access reports."""
    reference, folder = run()
    assert reference.ret == 0
    expected = report_of(folder)["summary"]
    shared = Path(shutil.copytree(cache_dir, tmp_path / "shared-cache", symlinks=True))
    for lock in shared.rglob("*.lock"):
        lock.unlink()  # a shared cache copied elsewhere need not carry lock files
    args = ["-m", "pytest", *GRID, "--can-cache-dir", str(shared), "--can-report-dir", str(tmp_path / "out")]
    result = run_read_only(args, shared, cwd=pytester.path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "computed but not stored" not in result.stdout  # every ranking came from the shared cache
    assert report_of(tmp_path / "out")["summary"] == expected
