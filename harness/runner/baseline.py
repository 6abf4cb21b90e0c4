"""Regression baselines: a searched curve's thresholds and key metrics, stored once and compared on later runs.

pytest-regressions was considered: its `data_regression` compares exactly and `num_regression` needs pandas
and a column-per-number layout; thresholds want a *relative* tolerance on k and absolute ones in log space, so
the comparison is written here (a few lines) and the file stays a readable JSON document.

An entry holds the values compared; the settings the curve was measured with, which must all match for a
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
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.core import atomic_files
from harness.core.errors import BaselineError
from harness.core.labels import curve_label
from harness.core.versions import library_versions

FORMAT = 2  # entries that record every result setting; format 1 (no "format" field) recorded a hand-kept subset
THRESHOLDS = ("k1", "k2")
LOG10_METRICS = ("log10_ppl_baseline", "log10_ppl_ratio_at_k2")
CLIP_METRICS = ("clip_baseline", "clip_at_k2")
REQUIRED = ("log10_ppl_baseline",)  # every curve has one; the other values are None where there is none
ABSENT = "(absent)"


@dataclass(frozen=True)
class Tolerances:
    k_rtol: float = 0.1  # |k − k_baseline| ≤ k_rtol · k_baseline (at least ±0: equal for small k)
    log10_atol: float = 0.1  # log10 PPL values, absolute
    clip_atol: float = 2.0  # CLIP score points, absolute

    def __post_init__(self) -> None:
        for name in ("k_rtol", "log10_atol", "clip_atol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"baseline tolerance {name} must be a finite number ≥ 0, got {value!r}")


def curve_key(row: dict) -> str:
    return curve_label(row["model"], row["site"], row["category"], row.get("ranking"))


def entry_of(analysis_row: dict) -> dict:
    """What a baseline stores of one analysed curve (`CurveAnalysis.to_row()`): its values, every setting it was
    measured with (the point record) and what computed it (the provenance record, with the library versions)."""
    return {
        "format": FORMAT,
        **{name: analysis_row[name] for name in THRESHOLDS + LOG10_METRICS + CLIP_METRICS},
        "settings": analysis_row["options"],
        "recorded_with": {**analysis_row["provenance"], **library_versions()},
    }


def entry_problems(entry: object) -> list[str]:
    """Why `entry` is not a valid baseline entry (empty when it is): each compared value of the right type and
    finite, the settings and provenance mappings present."""
    if not isinstance(entry, dict):
        return [f"is a {type(entry).__name__}, not a JSON object"]
    if entry.get("format") != FORMAT:
        return []  # an older entry: its curve's comparison says so (see check_against), the rest of the file works
    problems = []
    for name in THRESHOLDS:
        value = entry.get(name, ABSENT)
        if value is not None and (type(value) is not int or value < 1):
            problems.append(f"{name} is {value!r}: expected a whole number ≥ 1, or null (no such k found)")
    for name in LOG10_METRICS + CLIP_METRICS:
        value = entry.get(name, ABSENT)
        if value is None and name not in REQUIRED:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            allowed = "a finite number" + ("" if name in REQUIRED else ", or null")
            problems.append(f"{name} is {value!r}: expected {allowed}")
    for name in ("settings", "recorded_with"):
        if not isinstance(entry.get(name), dict):
            problems.append(f"{name} is {entry.get(name, ABSENT)!r}: expected a JSON object")
    return problems


def compare(current: dict, baseline: dict, tolerances: Tolerances) -> list[tuple[str, object, object, str]]:
    """Rows (what, baseline, now, allowed) for every compared value outside its tolerance."""
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
    for names, tolerance in ((LOG10_METRICS, tolerances.log10_atol), (CLIP_METRICS, tolerances.clip_atol)):
        for name in names:
            then, now = baseline[name], current[name]
            if (then is None) != (now is None) or (then is not None and abs(now - then) > tolerance):
                moved.append((name, then, now, f"±{tolerance:g}"))
    return moved


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
