"""Regression baselines: a searched curve's thresholds and key metrics, stored once and compared on later runs.

pytest-regressions was considered: its `data_regression` compares exactly and `num_regression` needs pandas
and a column-per-number layout; thresholds want a *relative* tolerance on k and absolute ones in log space, so
the comparison is written here (a few lines) and the file stays a readable JSON document.

An entry holds the values compared (k₁ and k₂; each metric with a declared tolerance at k = 0 and at k₂,
harness.science.metric_registry); the settings the curve was measured with, which must all match for a
comparison to mean anything: the point record, derived from every setting tagged as changing results
(harness.core.recorded) and the digest of the images or text; and what it was recorded with (code fingerprint,
checkpoint, weight digest, library versions, device): when a comparison fails, the diff shows which of those
moved. Every entry is validated when the file is read, before any case runs: a malformed or non-finite value is
an error naming the entry.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from harness.core import atomic_files
from harness.core.errors import BaselineError
from harness.core.versions import library_versions
from harness.science.metric_registry import Metric, get_metric

FORMAT = 3  # 3: each compared metric's values under "metrics"; 2: fixed fields; 1 (no "format"): fewer settings
THRESHOLDS = ("k1", "k2")
POINTS = ("baseline", "at_k2")  # where a metric is compared: at k = 0, and at k₂ (as the tables show it)
ABSENT = "(absent)"


@dataclass(frozen=True)
class Tolerances:
    """How far a curve may move from its baseline: k₁ and k₂ relatively, each metric absolutely (its declared
    tolerance unless `metric_atol` names another, harness.science.metric_registry)."""

    k_rtol: float = 0.1  # |k − k_baseline| ≤ k_rtol · k_baseline (at least ±0: equal for small k)
    metric_atol: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in (("k_rtol", self.k_rtol), *self.metric_atol.items()):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"baseline tolerance of {name} must be a finite number ≥ 0, got {value!r}")
        for name in self.metric_atol:
            get_metric(name)  # an unknown metric is an error listing the registered ones

    def atol(self, metric: Metric) -> float:
        return self.metric_atol.get(metric.name, metric.tolerance)


def compared_metrics(names: Iterable[str]) -> list[Metric]:
    """The metrics among `names` that baselines compare: those with a declared tolerance."""
    return [get_metric(name) for name in names if get_metric(name).tolerance is not None]


def curve_key(row: dict) -> str:
    """The entry's key: the curve's label (harness.runner.curve.row_label, imported here: it needs the probes,
    and this module must stay importable without torch for the plugin's options)."""
    from harness.runner.curve import row_label

    return row_label(row)


def entry_of(analysis_row: dict) -> dict:
    """What a baseline stores of one analysed curve (`CurveAnalysis.to_row()`): k₁, k₂, each compared metric at
    k = 0 and at k₂, every setting it was measured with (the point record) and what computed it (the provenance
    record, with the library versions)."""
    at_k2 = analysis_row["at_k2"] or {}
    return {
        "format": FORMAT,
        **{name: analysis_row[name] for name in THRESHOLDS},
        "metrics": {
            metric.name: {"baseline": analysis_row["baselines"][metric.name], "at_k2": at_k2.get(metric.name)}
            for metric in compared_metrics(analysis_row["baselines"])
        },
        "settings": analysis_row["options"],
        "recorded_with": {**analysis_row["provenance"], **library_versions()},
    }


def entry_problems(entry: object) -> list[str]:
    """Why `entry` is not a valid baseline entry (empty when it is): k₁ and k₂ whole numbers ≥ 1 or null, each
    metric's values finite numbers (its value at k₂ may be null: no k₂), the settings and provenance mappings
    present."""
    if not isinstance(entry, dict):
        return [f"is a {type(entry).__name__}, not a JSON object"]
    if entry.get("format") != FORMAT:
        return []  # an older entry: its curve's comparison says so (see check_against), the rest of the file works
    problems = []
    for name in THRESHOLDS:
        value = entry.get(name, ABSENT)
        if value is not None and (type(value) is not int or value < 1):
            problems.append(f"{name} is {value!r}: expected a whole number ≥ 1, or null (no such k found)")
    metrics = entry.get("metrics", ABSENT)
    if not isinstance(metrics, dict):
        problems.append(f"metrics is {metrics!r}: expected a JSON object")
        metrics = {}
    for name, values in metrics.items():
        values = values if isinstance(values, dict) else {}
        for point in POINTS:
            value = values.get(point, ABSENT)
            if value is None and point == "at_k2":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                allowed = "a finite number" + (", or null" if point == "at_k2" else "")
                problems.append(f"{name} {point} is {value!r}: expected {allowed}")
    for name in ("settings", "recorded_with"):
        if not isinstance(entry.get(name), dict):
            problems.append(f"{name} is {entry.get(name, ABSENT)!r}: expected a JSON object")
    return problems


def compare(current: dict, baseline: dict, tolerances: Tolerances) -> list[tuple[str, object, object, str]]:
    """Rows (what, baseline, now, allowed) for every compared value outside its tolerance: k₁ and k₂, and each
    metric at k = 0 and at k₂ as the tables show it (its change against k = 0 where it is shown as one)."""
    moved = []
    for name in THRESHOLDS:
        then, now = baseline[name], current[name]
        if then is None or now is None:
            if then != now:
                moved.append((name, then, now, "both found or both none"))
            continue
        allowed = tolerances.k_rtol * then
        if abs(now - then) > allowed:
            moved.append((name, then, now, f"±{allowed:g}"))
    for metric in compared_metrics(dict.fromkeys([*baseline["metrics"], *current["metrics"]])):
        before, after = baseline["metrics"].get(metric.name, {}), current["metrics"].get(metric.name, {})
        tolerance = tolerances.atol(metric)
        for title, then, now in (
            (f"{metric.title}₀", before.get("baseline"), after.get("baseline")),
            (metric.k2_title, _shown_at_k2(metric, before), _shown_at_k2(metric, after)),
        ):
            if (then is None) != (now is None) or (then is not None and abs(now - then) > tolerance):
                moved.append((title, then, now, f"±{tolerance:g}"))
    return moved


def _shown_at_k2(metric: Metric, values: Mapping[str, float | None]) -> float | None:
    """A metric at k₂ as the tables show it: its change against k = 0 where it is shown as one, else its value."""
    at_k2, baseline = values.get("at_k2"), values.get("baseline")
    if at_k2 is None or metric.delta_title is None:
        return at_k2
    return None if baseline is None else at_k2 - baseline


class BaselineFile:
    """A JSON file of entries keyed by `model / site / category`; updates are locked and atomic (xdist-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self, *, validate: bool = True) -> dict:
        """Every entry, each one validated (unless `validate` is False: an update replaces entries, so invalid
        ones of other curves are kept as they are): a malformed file or entry is a BaselineError naming every
        problem."""
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BaselineError(
                f"baseline file {self.path} is unreadable ({error}); restore it from version control or "
                "rewrite it with --can-baseline-update"
            ) from error
        if not isinstance(document, dict) or not isinstance(document.get("curves"), dict):
            raise BaselineError(
                f"baseline file {self.path} has no 'curves' mapping; rewrite it with --can-baseline-update"
            )
        curves = document["curves"]
        if not validate:
            return curves
        problems = [f"{key!r}: {problem}" for key, entry in curves.items() for problem in entry_problems(entry)]
        if problems:
            raise BaselineError(
                f"baseline file {self.path} has {len(problems)} invalid value(s):\n  "
                + "\n  ".join(problems)
                + "\nrestore it from version control, or rewrite those curves with --can-baseline-update"
            )
        return curves

    def check_writable(self) -> None:
        """Raise BaselineError, before any case runs, when the file could not be rewritten (its folder cannot be
        made or written): an update must not fail after the search."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise BaselineError(
                f"--can-baseline-update cannot write {self.path} ({folder}: {error.strerror or error}); pass a "
                "--can-baseline path in a folder you can write"
            ) from None

    def record(self, key: str, entry: dict) -> None:
        """Write (or replace) one entry, keeping every other curve's."""
        problems = entry_problems(entry)
        if problems:  # a result that cannot be compared later is refused now, not stored
            raise BaselineError(f"refusing to store baseline entry {key!r}: {'; '.join(problems)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            curves = self.read(validate=False)
            curves[key] = entry
            text = json.dumps({"curves": dict(sorted(curves.items()))}, indent=2, allow_nan=False) + "\n"
            atomic_files.write_text(self.path, text)


def check_against(
    baseline: dict | None, current: dict, key: str, path: Path, tolerances: Tolerances
) -> str | None:
    """None when `current` matches its baseline; otherwise a readable explanation of why it does not."""
    if baseline is None:
        return f"no baseline entry {key!r} in {path}: record one with --can-baseline-update"
    if baseline.get("format") != FORMAT:
        return (
            f"the baseline entry {key!r} in {path} was written by an older harness, which recorded fewer of the "
            "settings a result depends on; rewrite it with --can-baseline-update"
        )
    then_settings, now_settings = baseline["settings"], current["settings"]
    differing = {
        name: (then_settings.get(name, ABSENT), now_settings.get(name, ABSENT))
        for name in sorted(set(then_settings) | set(now_settings))
        if then_settings.get(name, ABSENT) != now_settings.get(name, ABSENT)
    }
    if differing:
        listed = "; ".join(f"{name}: baseline {then!r}, now {now!r}" for name, (then, now) in differing.items())
        return (
            f"the baseline in {path} was measured with other settings ({listed}); run with the same "
            "options, or rewrite it with --can-baseline-update"
        )
    moved = compare(current, baseline, tolerances)
    if not moved:
        return None
    lines = [f"moved against the baseline in {path}:"]
    lines += [f"  {name}: baseline {then}, now {now} (allowed {allowed})" for name, then, now, allowed in moved]
    recorded_then = baseline["recorded_with"]
    provenance_changes = [
        f"  {name}: {recorded_then.get(name, ABSENT)!r} → {value!r}"
        for name, value in current["recorded_with"].items()
        if recorded_then.get(name, ABSENT) != value
    ]
    if provenance_changes:
        lines += ["what changed since the baseline was recorded:", *provenance_changes]
    lines.append("if the change is intended, rewrite the baseline with --can-baseline-update")
    return "\n".join(lines)


@dataclass(frozen=True)
class Baselines:
    """What a run does with baselines: nothing (no file), compare against the file, or rewrite its entries."""

    file: BaselineFile | None = None
    update: bool = False
    tolerances: Tolerances = Tolerances()

    def check(self, analysis) -> str | None:
        """None when there is nothing to compare, the entry was rewritten, or the curve matches its baseline."""
        if self.file is None:
            return None
        row = analysis.to_row()
        key, entry = curve_key(row), entry_of(row)
        if self.update:
            self.file.record(key, entry)
            return None
        return check_against(self.file.read().get(key), entry, key, self.file.path, self.tolerances)
