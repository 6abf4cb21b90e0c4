"""Reports from hand-built points: the summary's notes and chance column, and the CSV's flattened options."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import pytest

from harness.reporting.report import _flat_row, render_summary, render_thresholds, summarize, write_reports
from harness.runner.experiment import CollapsePoint

HEADERS = ["model", "site", "category", "n", "PPL₀", "CLIP₀", "chance", "k₁ stage 1", "k₂ stage 2"]


def point(category: str = "circle", k: int = 0, stage: int = 0, **changes) -> dict:
    """A point row as CollapsePoint.to_row() writes it, every field set by hand."""
    row = {
        "model": "tiny-llava",
        "site": "lm.down_proj",
        "category": category,
        "k": k,
        "probe": "captioning",
        "n_samples": 4,
        "metrics": {"log10_ppl": 0.8686, "self_log10_ppl": 0.6514, "clip": 30.25, "degenerate_rate": 0.0},
        "baselines": {"log10_ppl": 0.8686, "self_log10_ppl": 0.6514, "clip": 30.25, "degenerate_rate": 0.0},
        "chance": {"clip": 10.5},
        "baseline_chance": {"clip": 10.5},
        "stage": stage,
        "generated": True,
        "captions": ["a red circle", "a circle"],
        "masked_neurons": [["lm.down_proj", 0, channel, 1.0 / (channel + 1)] for channel in range(k)],
        "mask_modes": ["weight"] if k else [],
        "intervention": "top-k, zero ablation",
        "ranking": "CAN, α=1, mean over all positions",
        "ranking_key": "ab" * 32 if k else None,
        "options": {"alpha": 1.0, "clip_model": "tiny-clip@1", "data": "cd" * 8},
        "provenance": {"checkpoint": "embedded:tiny-llava@v2", "weights": "ef" * 8},
    }
    for name, value in changes.items():  # "clip=…", "clip_baseline=…", "clip_chance=…": into their records
        record, _, metric = name.partition("__")
        if metric:
            row[record] = {**row[record], metric: value}
        else:
            row[name] = value
    return row


def curve(category: str, stages: list[int], **changes) -> list[dict]:
    return [point(category, k, stage, **changes) for k, stage in zip((0, 1, 2, 4), stages, strict=True)]


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_hand_built_point_has_every_field():
    """The helper above writes exactly CollapsePoint's fields, so the tests below see real-shaped rows."""
    assert set(point()) == {f.name for f in dataclasses.fields(CollapsePoint)}


def summary_row(category: str, *, monotone: bool, clip_baseline: float, clip_chance: float | None) -> dict:
    return {
        "model": "tiny-llava",
        "site": "lm.down_proj",
        "probe": "captioning",
        "ranking": "CAN, α=1, mean over all positions",
        "category": category,
        "n_samples": 4,
        "baselines": {"log10_ppl": 0.5, "clip": clip_baseline},
        "baseline_chance": {"clip": clip_chance},
        "k_stage1": 2,
        "k_stage2": None,
        "k_evaluated": [0, 1, 2, 4],
        "monotone": monotone,
    }


def test_notes_column_of_a_hand_built_summary():
    """notes is the last column, after the k grid: non-monotone for a curve whose stage falls again, CLIP₀ ≤
    chance when the baseline CLIP does not beat chance (equality included), nothing otherwise."""
    summary = [
        summary_row("a", monotone=True, clip_baseline=30.0, clip_chance=10.0),
        summary_row("b", monotone=False, clip_baseline=30.0, clip_chance=10.0),
        summary_row("c", monotone=True, clip_baseline=5.0, clip_chance=10.0),
        summary_row("d", monotone=False, clip_baseline=5.0, clip_chance=10.0),
        summary_row("e", monotone=True, clip_baseline=10.0, clip_chance=10.0),
        summary_row("f", monotone=True, clip_baseline=0.0, clip_chance=None),
    ]
    header, *rows = table_rows(render_summary(summary))
    assert header == [*HEADERS, "k grid", "notes"]
    assert [(row[2], row[-2], row[-1]) for row in rows] == [
        ("a", "0…4 (4 pts)", ""),
        ("b", "0…4 (4 pts)", "non-monotone"),
        ("c", "0…4 (4 pts)", "CLIP₀ ≤ chance"),
        ("d", "0…4 (4 pts)", "non-monotone; CLIP₀ ≤ chance"),
        ("e", "0…4 (4 pts)", "CLIP₀ ≤ chance"),
        ("f", "0…4 (4 pts)", ""),
    ]
    assert rows[-1][6] == "n/a"


def test_summary_notes_from_hand_built_points():
    """From points: stages 0, 2, 1, 2 are non-monotone; a CLIP baseline below the chance level is flagged."""
    rows = curve("circle", [0, 2, 1, 2]) + curve("square", [0, 1, 1, 2], baselines__clip=4.0, metrics__clip=4.0)
    _, *table = table_rows(render_summary(summarize(rows)))
    assert [(row[2], row[7], row[8], row[-1]) for row in table] == [
        ("circle", "1", "1", "non-monotone"),
        ("square", "1", "4", "CLIP₀ ≤ chance"),
    ]


def test_summary_chance_is_the_baseline_chance_even_without_the_k0_point():
    """The summary's chance is the k = 0 chance (baseline_chance), not the chance of the first point
    recorded: with only k = 4 measured (e.g. -k k4) it still shows the baseline chance."""
    rows = [point("circle", 4, 2, chance__clip=1.0, baseline_chance__clip=12.5, baselines__clip=20.0)]
    (summary,) = summarize(rows)
    assert summary["baseline_chance"]["clip"] == 12.5
    _, row = table_rows(render_summary([summary]))
    assert row[6] == "12.5"
    assert row[-1] == ""


def test_flat_row_merges_options_and_drops_captions():
    """A CSV row is the point without captions; its metrics, baselines and chance levels, its options and its
    provenance merged in as columns (a metric by its name, its baseline and chance suffixed)."""
    row = _flat_row(point("circle", 2, 1))
    assert not {"captions", "options", "provenance", "metrics", "baselines", "chance"} & set(row)
    assert (row["clip"], row["clip_baseline"], row["clip_chance"], row["clip_chance_baseline"]) == (30.25,) * 2 + (
        10.5,
    ) * 2
    assert row["clip_model"] == "tiny-clip@1"
    assert row["checkpoint"] == "embedded:tiny-llava@v2"
    merged = 4 * 2 + 2 + 3 + 2  # metrics and baselines, two chance levels, options, provenance
    assert len(row) == len(point()) - 7 + merged


@pytest.mark.parametrize("record", ["options", "provenance"])
@pytest.mark.parametrize("clash", [["clip"], ["k", "stage"]])
def test_flat_row_refuses_records_that_clash_with_point_fields(record, clash):
    """An option or provenance entry named like a point field would overwrite it in the CSV: a ValueError naming
    the fields."""
    row = point("circle", 1, 1)
    row[record] = {**row[record], **{name: "from the record" for name in clash}}
    with pytest.raises(ValueError, match=re.escape(f"{record} names {clash!r} clash with point fields")):
        _flat_row(row)


def test_csv_clip_column_is_the_score(tmp_path):
    """collapse.csv keeps the CLIP score in `clip` and the CLIP model in `clip_model`, one row per point."""
    rows = curve("circle", [0, 1, 1, 2])
    json_path, csv_path = write_reports(rows, tmp_path, meta={"harness": "test"})
    with csv_path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["k"]) for r in table] == [0, 1, 2, 4]
    assert all(float(r["clip"]) == 30.25 and r["clip_model"] == "tiny-clip@1" for r in table)
    assert [json.loads(r["masked_neurons"]) for r in table] == [p["masked_neurons"] for p in rows]
    document = json.loads(json_path.read_text())
    assert [p["options"]["clip_model"] for p in document["points"]] == ["tiny-clip@1"] * 4


def analysis_row(k2, controls=(), layers=None, violations=()) -> dict:
    return {
        "model": "m", "site": "lm.down_proj", "probe": "captioning",
        "ranking": "CAN, α=1, mean over all positions", "category": "circle",
        "k_max": 64, "k1": 3, "k2": k2,
        "evaluations": 9, "passes": [[1, 2, 8], [3, 5, 6], [4]],
        "monotone": not violations, "violations": [list(v) for v in violations],
        "baselines": {"log10_ppl": 0.5, "clip": 80.0}, "baseline_chance": {"clip": 20.0},
        "at_k2": {"log10_ppl": 2.0, "clip": 12.0} if k2 else None,
        "controls": [{"intervention": name, "stage": stage} for name, stage in controls],
        "layers": layers or {},
        "points": [{"k": 0, "masked_neurons": []}] + (
            [{"k": k2, "masked_neurons": [["lm.down_proj", i % 3, 10 + i, 1.0] for i in range(min(k2, 64))]}]
            if k2 else []
        ),
    }  # fmt: skip


def test_threshold_table_shows_controls_layers_and_recoveries():
    rows = [
        analysis_row(
            8,
            [("random-k (seed 0), zero ablation", 1), ("top-k, mean ablation", 0)],
            {"lm.down_proj": {"0": 5, "2": 3}},
        ),
        analysis_row(
            8, [("random-k (seed 1), zero ablation", 2)], {"lm.down_proj": {"1": 8}}, violations=[(8, 9)]
        ),
        analysis_row(None),
    ]
    table = render_thresholds(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    k2_set = " — L0·10 L1·11 L2·12 L0·13 L1·14 L2·15 L0·16 L1·17"  # a k₂ set of ≤ 8 is listed neuron by neuron
    assert cells[0][6:] == ["3", "8", "9", "3", "+1.50", "12.0", "hold (2)", "L0:5 L2:3" + k2_set, ""]
    assert cells[1][12:] == ["COLLAPSE: random-k (seed 1)", "L1:8" + k2_set, "non-monotone: 8→9"]
    assert cells[2][6:8] == ["3", "none ≤ 64"] and cells[2][10:14] == ["", "", "", ""]


def test_threshold_table_breaks_a_joint_ranking_down_by_site():
    layers = {"lm.down_proj": {"0": 5, "2": 2}, "lm.gate_proj": {"1": 1}, "lm.up_proj": {}}
    row = {**analysis_row(9, layers=layers), "site": "lm.down_proj+lm.gate_proj+lm.up_proj"}
    cells = [c.strip() for c in render_thresholds([row]).splitlines()[2].strip("|").split("|")]
    assert cells[13] == "lm.down_proj 7 (L0:5 L2:2) · lm.gate_proj 1 (L1:1) · lm.up_proj 0"  # 9 > 8: not listed


def test_a_ranking_column_appears_only_when_rankings_differ():
    """One ranking: the title names it and the tables have no ranking column; several: a column says which."""
    rows = [
        analysis_row(8),
        {**analysis_row(None), "ranking": "PCICN, max over all positions, σ=5, K=100, seed=0"},
    ]
    assert "ranking" not in table_rows(render_thresholds(rows[:1]))[0]
    header, *cells = table_rows(render_thresholds(rows))
    assert header[:4] == ["model", "site", "ranking", "category"]
    assert [row[2] for row in cells] == [
        "CAN, α=1, mean over all positions",
        "PCICN, max over all positions, σ=5, K=100, seed=0",
    ]
