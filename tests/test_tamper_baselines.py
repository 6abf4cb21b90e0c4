"""Fault-and-tamper suite: regression baselines compare only like with like, and fail what they should fail.

Replays the defects where NaN in a baseline entry made the check pass (rc 0), `Infinity` for k₁/k₂ was never
flagged, malformed entries (`"k2": "1"`, no `settings`) raised raw tracebacks after the search had run, a text
model's baseline recorded at `--can-text-max-tokens 512` was compared at 256 as if nothing changed (so were
curves searched to another `--can-k-max`), and `--can-baseline-update` into a read-only folder failed after the
search. Each is now an error naming the entry or the setting, before any case runs where it can be.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.core.errors import BaselineError
from harness.runner.baseline import FORMAT, BaselineFile
from harness.runner.session import HarnessSession
from harness.runner.settings import HarnessSettings

pytest_plugins = ["pytester"]

ENTRY = {
    "format": FORMAT, "k1": 1, "k2": 2, "metrics": {"log10_ppl": {"baseline": 0.5, "at_k2": 1.7}},
    "settings": {"method": "can"}, "recorded_with": {"weights": "abc"},
}  # fmt: skip

# one search case on the tiny text model, compared with (or written to) the baseline
TEXT_CASE = """
import pytest
from harness import assert_matches_baseline


@pytest.mark.collapse_search(models=["tiny-llama"], sites=["lm.down_proj"])
def test_text_curve(collapse_analysis, can_baselines):
    assert_matches_baseline(collapse_analysis, can_baselines)
"""


@pytest.mark.parametrize(
    ("path", "text", "problem"),
    [
        ("metrics.log10_ppl.at_k2", "NaN", "log10_ppl at_k2 is nan: expected a finite number, or null"),
        ("metrics.log10_ppl.at_k2", "Infinity", "log10_ppl at_k2 is inf: expected a finite number, or null"),
        ("metrics.log10_ppl.baseline", "null", "log10_ppl baseline is None: expected a finite number"),
        ("metrics.log10_ppl.baseline", '"0.5"', "log10_ppl baseline is '0.5': expected a finite number"),
        ("metrics", "[]", "metrics is []: expected a JSON object"),
        ("k2", "Infinity", "k2 is inf: expected a whole number ≥ 1, or null"),
        ("k1", '"1"', "k1 is '1': expected a whole number ≥ 1, or null"),
        ("k1", "1.5", "k1 is 1.5: expected a whole number ≥ 1, or null"),
        ("k2", "true", "k2 is True: expected a whole number ≥ 1, or null"),
        ("k2", "0", "k2 is 0: expected a whole number ≥ 1, or null"),
        ("settings", "null", "settings is None: expected a JSON object"),
    ],
)
def test_a_malformed_entry_is_refused_when_read_naming_it(tmp_path, path, text, problem):
    """Each bad value is named with its curve when the file is read; the well-formed curve beside it is not."""
    edited = json.loads(json.dumps(ENTRY))
    *parents, last = path.split(".")
    holder = edited
    for name in parents:
        holder = holder[name]
    holder[last] = "@"
    entry = json.dumps(edited).replace('"@"', text)  # the probe's edit: literal NaN, Infinity, a string…
    file = tmp_path / "b.json"
    file.write_text(f'{{"curves": {{"good": {json.dumps(ENTRY)}, "bad / curve": {entry}}}}}')
    with pytest.raises(BaselineError) as error:
        BaselineFile(file).read()
    message = str(error.value)
    assert f"baseline file {file} has 1 invalid value(s):\n  'bad / curve': {problem}" in message
    assert "'good'" not in message


def test_an_entry_without_settings_is_refused(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"curves": {"c": {key: v for key, v in ENTRY.items() if key != "settings"}}}))
    with pytest.raises(BaselineError, match=r"'c': settings is '\(absent\)': expected a JSON object"):
        BaselineFile(path).read()


def test_a_result_that_could_not_be_compared_later_is_not_stored(tmp_path):
    file = BaselineFile(tmp_path / "b.json")
    with pytest.raises(BaselineError, match=r"refusing to store baseline entry 'c': k2 is nan"):
        file.record("c", {**ENTRY, "k2": float("nan")})
    assert not file.path.exists()


def test_nan_in_a_baseline_fails_the_run_before_any_case(pytester, cache_dir):
    """The probe's replay: NaN where a number belongs. A usage error (exit 4) naming the entry, before any case."""
    pytester.makepyfile(test_text=TEXT_CASE)
    entry = json.dumps(ENTRY).replace("1.7", "NaN")  # the probe's edit: a literal NaN, which json accepts
    (pytester.path / "b.json").write_text(f'{{"curves": {{"x": {entry}}}}}')
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-baseline", "b.json"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = "\n".join(result.outlines + result.errlines)
    assert "'x': log10_ppl at_k2 is nan: expected a finite number, or null" in text
    assert "passed" not in text and "failed" not in text


def test_an_update_into_a_folder_that_cannot_be_written_fails_before_any_case(pytester, cache_dir, run_read_only):
    pytester.makepyfile(test_text=TEXT_CASE)
    locked = pytester.path / "locked"
    locked.mkdir()
    args = [
        "-m", "pytest", "-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-report-dir",
        str(pytester.path / "reports"), "--can-baseline", str(locked / "b.json"), "--can-baseline-update",
    ]  # fmt: skip
    result = run_read_only(args, locked, cwd=pytester.path)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"--can-baseline-update cannot write {locked / 'b.json'}" in result.stderr
    assert "passed" not in result.stdout and not (locked / "b.json").exists()


@pytest.fixture(scope="module")
def tiny_llama_loaded(cache_dir):
    """tiny-llama loaded before `pytester` is set up: pytester drops from sys.modules what was imported after its
    set-up, and the model classes must survive it."""
    settings = HarnessSettings(cache_dir=cache_dir, device="cpu", dtype="float32")
    return HarnessSession(settings).experiment("tiny-llama")


def test_a_text_baseline_is_compared_only_at_its_own_settings(tiny_llama_loaded, pytester, cache_dir):
    """Recorded at the default 512 text tokens: the same run passes; at 256 tokens, or searched to another k_max,
    the case fails saying which setting differs (before: compared as if nothing changed)."""
    pytester.makepyfile(test_text=TEXT_CASE)

    def run(*options: str):
        return pytester.runpytest(
            "-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-device", "cpu", "--can-dtype",
            "float32", "--can-report-dir", str(pytester.path / "reports"), "--can-baseline", "b.json",
            "--can-max-new-tokens", "6", "--can-control-seeds", "1", *options,
        )  # fmt: skip

    run("--can-baseline-update").assert_outcomes(passed=1)
    stored = json.loads(Path(pytester.path / "b.json").read_text())["curves"]
    (entry,) = stored.values()
    assert (entry["settings"]["text_max_tokens"], entry["settings"]["k_max"]) == (512, 8192)
    run().assert_outcomes(passed=1)
    for option, value, setting in (
        ("--can-text-max-tokens", "256", "text_max_tokens: baseline 512, now 256"),
        ("--can-k-max", "64", "k_max: baseline 8192, now 64"),
    ):
        failed = run(option, value)
        failed.assert_outcomes(failed=1)
        text = "\n".join(failed.outlines)
        assert f"was measured with other settings ({setting})" in text, text[-3000:]
