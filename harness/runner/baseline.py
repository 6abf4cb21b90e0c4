"""Regression baselines: a searched curve's thresholds and key metrics, stored once and compared on later runs.

pytest-regressions was considered: its `data_regression` compares exactly and `num_regression` needs pandas
and a column-per-number layout; thresholds want a *relative* tolerance on k and absolute ones in log space, so
the comparison is written here (a few lines) and the file stays a readable JSON document.

An entry holds the values compared, the settings that must match for a comparison to mean anything (α,
positions, prompt, caption length, dtype, device, search, stage thresholds, image count), and what it was
recorded with (checkpoint, weight digest, library versions): when a comparison fails, the diff shows which
of those moved.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.core import atomic_files
from harness.core.errors import BaselineError
from harness.core.labels import curve_label
from harness.core.versions import library_versions

COMPARED_SETTINGS = (
    "method", "alpha", "positions", "aggregation", "noise_sigma", "noise_samples", "seed", "prompt",
    "max_new_tokens", "dtype", "device", "stage1_ppl_ratio", "stage1_clip_fraction", "stage2_log10_ppl_ratio",
    "stage2_degenerate_rate", "text_stage2",
)  # fmt: skip
PROVENANCE = ("checkpoint", "weights", "clip_model")
THRESHOLDS = ("k1", "k2")
LOG10_METRICS = ("log10_ppl_baseline", "log10_ppl_ratio_at_k2")
CLIP_METRICS = ("clip_baseline", "clip_at_k2")


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


def entry_of(analysis_row: dict, versions: dict) -> dict:
    """What a baseline stores of one analysed curve (`CurveAnalysis.to_row()`)."""
    options = analysis_row["options"]
    settings = {name: options.get(name) for name in COMPARED_SETTINGS}
    settings.update(
        search=analysis_row["search"],
        search_parallel=analysis_row["search_parallel"],
        n_images=analysis_row["n_images"],
    )
    device = str(settings["device"])
    settings["device"] = device.split(":")[0]  # cuda:0 and cuda:1 measure alike
    return {
        **{name: analysis_row[name] for name in THRESHOLDS + LOG10_METRICS + CLIP_METRICS},
        "settings": settings,
        "recorded_with": {**{name: options.get(name) for name in PROVENANCE}, **versions},
    }


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

    def read(self) -> dict:
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
        return document["curves"]

    def record(self, key: str, entry: dict) -> None:
        """Write (or replace) one entry, keeping every other curve's."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            curves = self.read()
            curves[key] = entry
            text = json.dumps({"curves": dict(sorted(curves.items()))}, indent=2, allow_nan=False) + "\n"
            atomic_files.write_text(self.path, text)


def check_against(
    baseline: dict | None, current: dict, key: str, path: Path, tolerances: Tolerances
) -> str | None:
    """None when `current` matches its baseline; otherwise a readable explanation of why it does not."""
    if baseline is None:
        return f"no baseline entry {key!r} in {path}: record one with --can-baseline-update"
    differing = {
        name: (baseline["settings"].get(name), value)
        for name, value in current["settings"].items()
        if baseline["settings"].get(name) != value
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
    provenance_changes = [
        f"  {name}: {baseline['recorded_with'].get(name)!r} → {value!r}"
        for name, value in current["recorded_with"].items()
        if baseline["recorded_with"].get(name) != value
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
        key, entry = curve_key(row), entry_of(row, library_versions())
        if self.update:
            self.file.record(key, entry)
            return None
        return check_against(self.file.read().get(key), entry, key, self.file.path, self.tolerances)
