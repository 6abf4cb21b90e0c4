"""Regression baselines: tolerant comparison, readable diffs, locked atomic updates, and a real run against the
committed baseline of the embedded models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.core.errors import BaselineError
from harness.runner.baseline import FORMAT, BaselineFile, Tolerances, check_against, compare

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "cases" / "baselines" / "synth.json"
CURVE = "synth-llava / lm.down_proj / circle"


def entry(**changes) -> dict:
    """A baseline entry; `metric__point=value` changes one metric value (e.g. `clip__at_k2=18.0`)."""
    base = {
        "format": FORMAT, "k1": 14, "k2": 216,
        "metrics": {"log10_ppl": {"baseline": 0.25, "at_k2": 2.25}, "clip": {"baseline": 91.75, "at_k2": 16.5}},
        "settings": {"alpha": 1.0, "dtype": "float32"}, "recorded_with": {"weights": "abc", "torch": "2.13.0"},
    }  # fmt: skip
    for name, value in changes.items():
        metric, _, point = name.partition("__")
        if point:
            base["metrics"] = {**base["metrics"], metric: {**base["metrics"][metric], point: value}}
        elif name in ("settings", "recorded_with"):
            base[name] = {**base[name], **value}
        else:
            base[name] = value
    return base


def test_values_within_tolerance_match():
    assert compare(entry(k2=230, clip__at_k2=18.0, log10_ppl__at_k2=2.3), entry(), Tolerances()) == []


@pytest.mark.parametrize(
    ("changes", "row"),
    [
        ({"k2": 250}, ("k2", 216, 250, "±21.6")),
        ({"k1": 16}, ("k1", 14, 16, "±1.4")),
        ({"k2": None}, ("k2", 216, None, "both found or both none")),
        ({"clip__baseline": 80.0}, ("CLIP₀", 91.75, 80.0, "±2")),
        ({"log10_ppl__at_k2": 3.25}, ("Δlog10 PPL@k₂", 2.0, 3.0, "±0.1")),
    ],
)
def test_values_outside_tolerance_are_listed(changes, row):
    """k₁, k₂ relatively; each metric at k = 0 and at k₂ as the tables show it (the PPL as its change)."""
    assert compare(entry(**changes), entry(), Tolerances()) == [row]


def test_a_metrics_tolerance_can_be_set_and_a_misspelt_one_is_refused():
    assert compare(entry(clip__baseline=88.0), entry(), Tolerances(metric_atol={"clip": 5.0})) == []
    with pytest.raises(KeyError, match="unknown metric 'clp'"):
        Tolerances(metric_atol={"clp": 5.0})


def test_moved_curve_message_shows_values_and_what_changed(tmp_path):
    message = check_against(
        entry(), entry(k2=300, recorded_with={"torch": "2.14.0"}), CURVE, tmp_path / "b.json", Tolerances()
    )
    assert message.startswith(f"moved against the baseline in {tmp_path / 'b.json'}:")
    assert "  k2: baseline 216, now 300 (allowed ±21.6)" in message
    assert "  torch: '2.13.0' → '2.14.0'" in message
    assert message.endswith("rewrite the baseline with --can-baseline-update")


def test_missing_entry_and_other_settings_are_explained(tmp_path):
    path = tmp_path / "b.json"
    assert "no baseline entry 'x' in" in check_against(None, entry(), "x", path, Tolerances())
    other = check_against(entry(), entry(settings={"dtype": "bfloat16"}), "x", path, Tolerances())
    assert "measured with other settings (dtype: baseline 'float32', now 'bfloat16')" in other


def test_record_keeps_other_curves_and_reads_back(tmp_path):
    baselines = BaselineFile(tmp_path / "sub" / "b.json")
    baselines.record("b", entry())
    baselines.record("a", entry(k2=8))
    baselines.record("b", entry(k2=9))
    assert baselines.read() == {"a": entry(k2=8), "b": entry(k2=9)}
    assert list(json.loads(baselines.path.read_text())["curves"]) == ["a", "b"]
    assert [p.name for p in baselines.path.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


@pytest.mark.parametrize("text", ["{not json", '{"other": 1}', "[]"])
def test_corrupt_baseline_file_names_itself(tmp_path, text):
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(BaselineError, match=f"baseline file {path}"):
        BaselineFile(path).read()


def test_tolerances_must_be_finite_and_non_negative():
    with pytest.raises(ValueError, match="k_rtol must be a finite number ≥ 0"):
        Tolerances(k_rtol=-0.1)


# -- a real regression run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_llava_loaded(synth_session):
    """synth-llava loaded before `pytester` is set up: pytester drops from sys.modules what was imported after
    its set-up, and the model classes must survive it for the tests that run after this one."""
    return synth_session.experiment("synth-llava")


def test_regression_run_passes_unchanged_and_fails_readably_when_moved(pytester, cache_dir, synth_llava_loaded):
    """The committed baseline of the embedded models: the real threshold case on one curve matches it; moving
    that curve's k₂ in a copy of the file makes the same run fail with the diff."""
    pytester.makepyfile(test_thresholds=(ROOT / "cases" / "test_thresholds.py").read_text())
    stored = json.loads(COMMITTED.read_text())
    moved = copy.deepcopy(stored)
    moved["curves"][CURVE]["k2"] = stored["curves"][CURVE]["k2"] // 2
    (pytester.path / "same.json").write_text(json.dumps(stored))
    (pytester.path / "moved.json").write_text(json.dumps(moved))

    def run(baseline: str):
        return pytester.runpytest(
            "-p", "no:cacheprovider", "--can-cache-dir", str(cache_dir), "--can-device", "cpu", "--can-dtype",
            "float32", "--can-report-dir", str(pytester.path / "reports"), "--can-baseline", baseline,
            "-k", "synth-llava and down_proj and circle and not gate_proj",
        )  # fmt: skip

    run("same.json").assert_outcomes(passed=1)
    failed = run("moved.json")
    failed.assert_outcomes(failed=1)
    text = "\n".join(failed.outlines)
    k2 = stored["curves"][CURVE]["k2"]
    assert f"AssertionError: {CURVE}: moved against the baseline in moved.json:" in text
    assert f"k2: baseline {k2 // 2}, now {k2} (allowed ±{0.1 * (k2 // 2):g})" in text
