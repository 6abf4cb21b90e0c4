"""One PNG per searched curve: each metric its points carry against k (the reference-PPL ratio, the CLIP score,
the rate of degenerate outputs, …), the two stages shaded, the controls at k₂ overlaid. Written next to the
JSON/CSV report (`<report dir>/plots/`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from harness.core import atomic_files
from harness.runner.curve import row_label
from harness.science.metric_registry import get_metric

STAGE_COLOURS = {1: "#f6d55c", 2: "#ed553b"}
CONTROL_MARKERS = {"random": ("x", "random-k controls"), "mean": ("^", "mean ablation of the top-k")}


# anything but (Unicode) letters, digits, '_', '-' and single dots: separators, spaces, control characters, '..'
_UNSAFE = re.compile(r"[^\w.-]+|\.{2,}|^\.")
_LONGEST_STEM = 200  # bytes of UTF-8: file names are limited to 255


def plot_file_name(row: dict) -> str:
    """`model__site__category.png` (and the ranking, if not the default), letters and digits of any script kept
    (a category `猫` gives `…__猫.png`). Anything else is replaced by `_`, and then (or when a very long name is
    shortened) a short hash of the exact label is appended, so that two curves never share a file: `a/b` and
    `a_b`, or `猫` and `狗` with their letters replaced, would otherwise."""
    label = row_label(row, separator="__")
    stem = _UNSAFE.sub("_", label)
    shortened = stem.encode()[:_LONGEST_STEM].decode(errors="ignore")
    if shortened != label:
        stem = f"{shortened}-{hashlib.sha256(label.encode()).hexdigest()[:10]}"
    return stem + ".png"


def plot_analysis(row: dict, path: Path) -> Path:
    """Draw one `CurveAnalysis.to_row()`: one panel per metric its curve shows (harness.science.metric_registry;
    a change against the baseline where the metric is shown as one), the baseline (k = 0) as the dashed reference
    line, its chance level dotted, the two stages shaded, the controls at k₂ overlaid."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    points = [p for p in row["points"] if p["k"] > 0]
    ks = [p["k"] for p in points]
    metrics = [get_metric(name) for name in row["baselines"] if get_metric(name).in_curves]
    figure, axes = plt.subplots(
        len(metrics), 1, sharex=True, figsize=(7, 3 * len(metrics)), constrained_layout=True, squeeze=False
    )
    axes = [axis for (axis,) in axes]
    right_edge = max(ks) if ks else row["k_max"]
    for index, (metric, axis) in enumerate(zip(metrics, axes, strict=True)):
        baseline = row["baselines"][metric.name]

        def plotted(value: float | None, metric=metric, baseline=baseline) -> float | None:
            if value is None or metric.delta_title is None:
                return value
            return None if baseline is None else value - baseline

        shown = [(p["k"], plotted(p["metrics"].get(metric.name))) for p in points]
        shown = [(k, value) for k, value in shown if value is not None]  # a search point may generate nothing
        axis.plot([k for k, _ in shown], [v for _, v in shown], "o-", color="#20639b", label="ranked top-k")
        if baseline is not None:
            axis.axhline(plotted(baseline), color="grey", linestyle="--", linewidth=1, label="baseline (k = 0)")
        chance = row["baseline_chance"].get(metric.name)
        if chance is not None:
            axis.axhline(plotted(chance), color="black", linestyle=":", linewidth=1, label="chance level")
        for stage, start, end in ((1, row["k1"], row["k2"]), (2, row["k2"], None)):
            if start is not None:
                axis.axvspan(start, end or right_edge, color=STAGE_COLOURS[stage], alpha=0.25, linewidth=0,
                             label=f"stage {stage}" if index == 0 else None)  # fmt: skip
        for control in row["controls"]:
            value = plotted(control["metrics"].get(metric.name))
            if value is None:
                continue
            marker, label = CONTROL_MARKERS["random" if control["intervention"].startswith("random") else "mean"]
            seen = set(axis.get_legend_handles_labels()[1])
            axis.plot([control["k"]], [value], marker, color="#3caea3", markersize=9,
                      label=None if label in seen else label)  # fmt: skip
        axis.set_ylabel(metric.delta_title or metric.title)
        axis.legend(fontsize=8, loc="best")
    axes[0].set_xscale("log")
    axes[-1].set_xlabel("k (neurons masked, log scale)")
    k1, k2 = ("none" if row[key] is None else row[key] for key in ("k1", "k2"))
    axes[0].set_title(f"{row['model']} / {row['site']} / {row['category']}: k₁ = {k1}, k₂ = {k2}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_files.replacing(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)
    return path
