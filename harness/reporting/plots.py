"""One PNG per searched curve: reference-PPL ratio and CLIP score (for a text-only model: the rate of degenerate
continuations) against k, the two stages shaded, the controls at k₂ overlaid. Written next to the JSON/CSV report
(`<report dir>/plots/`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from harness.core import atomic_files
from harness.core.labels import curve_label

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
    label = curve_label(row["model"], row["site"], row["category"], row.get("ranking"), separator="__")
    stem = _UNSAFE.sub("_", label)
    shortened = stem.encode()[:_LONGEST_STEM].decode(errors="ignore")
    if shortened != label:
        stem = f"{shortened}-{hashlib.sha256(label.encode()).hexdigest()[:10]}"
    return stem + ".png"


def plot_analysis(row: dict, path: Path) -> Path:
    """Draw one `CurveAnalysis.to_row()`; k = 0 (the baseline) is the dashed reference line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    points = [p for p in row["points"] if p["k"] > 0]
    ks = [p["k"] for p in points]
    has_clip = row["clip_baseline"] is not None
    second, second_label = ("clip", "CLIP score") if has_clip else ("degenerate_rate", "degenerate continuations")
    figure, (ppl_axis, clip_axis) = plt.subplots(2, 1, sharex=True, figsize=(7, 6), constrained_layout=True)
    ppl_axis.plot(ks, [p["log10_ppl_ratio"] for p in points], "o-", color="#20639b", label="ranked top-k")
    shown = [p for p in points if p[second] is not None]  # a text model's search points generate nothing
    clip_axis.plot(
        [p["k"] for p in shown], [p[second] for p in shown], "o-", color="#20639b", label="ranked top-k"
    )
    ppl_axis.axhline(0, color="grey", linestyle="--", linewidth=1, label="baseline (k = 0)")
    baseline = row["clip_baseline"] if has_clip else row["points"][0]["degenerate_rate"]
    clip_axis.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="baseline (k = 0)")
    if row["clip_chance"] is not None:
        clip_axis.axhline(row["clip_chance"], color="black", linestyle=":", linewidth=1, label="chance level")
    right_edge = max(ks) if ks else row["k_max"]
    for stage, start, end in ((1, row["k1"], row["k2"]), (2, row["k2"], None)):
        if start is not None:
            for axis in (ppl_axis, clip_axis):
                axis.axvspan(start, end or right_edge, color=STAGE_COLOURS[stage], alpha=0.25, linewidth=0,
                             label=f"stage {stage}" if axis is ppl_axis else None)  # fmt: skip
    for control in row["controls"]:
        kind = "random" if control["intervention"].startswith("random") else "mean"
        marker, label = CONTROL_MARKERS[kind]
        for axis, value in ((ppl_axis, control["log10_ppl_ratio"]), (clip_axis, control["clip"])):
            if value is None:  # a text-only model's control has no CLIP score
                continue
            seen = {text for text in axis.get_legend_handles_labels()[1]}
            axis.plot([control["k"]], [value], marker, color="#3caea3", markersize=9,
                      label=None if label in seen else label)  # fmt: skip
    ppl_axis.set_xscale("log")
    ppl_axis.set_ylabel("log10(PPL_k / PPL_0), reference PPL")
    clip_axis.set_ylabel(second_label)
    clip_axis.set_xlabel("k (neurons masked, log scale)")
    k1, k2 = ("none" if row[key] is None else row[key] for key in ("k1", "k2"))
    ppl_axis.set_title(f"{row['model']} / {row['site']} / {row['category']}: k₁ = {k1}, k₂ = {k2}")
    ppl_axis.legend(fontsize=8, loc="best")
    clip_axis.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_files.replacing(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)
    return path
