"""Summary table of the two-stage thresholds, and JSON/CSV reports stamped with versions and the git commit.

A report folder holds one run's report: a run takes it (an OS file lock, released when the run ends or dies)
before its first case, and a second run asking for it meanwhile is refused; a complete report replaces the
previous one whole, plots and thresholds.csv of curves it did not draw included, and supersedes `incomplete/`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from tabulate import tabulate

from harness.core import atomic_files
from harness.core.run_outcome import CurveCases
from harness.science.metric_registry import Metric, get_metric, registered_metrics
from harness.science.stages import first_k_at_stage, is_monotone

GROUP_KEYS = ("model", "site", "probe", "ranking", "category")  # what tells one curve from another
SHOWN_WHEN_THEY_DIFFER = ("probe", "ranking")  # columns a table has only when its rows differ in them
THRESHOLDS_FILE = "thresholds.csv"
LOCK_FILE = ".can-report.lock"  # held (flock) by the run writing the folder
OWNER_FILE = ".can-report.owner.json"  # which run that is, for the message refusing a second one


def provenance(root: Path | None = None) -> dict[str, object]:
    """What produced a result: library versions, Python, platform, git commit (with a dirty flag), time."""
    from harness.core.versions import library_versions

    return {
        **library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(root or Path.cwd()),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit(root: Path) -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (e.g. an installed copy): recorded as null
    return commit + ("-dirty" if dirty else "")


def latest_points(rows: Iterable[dict]) -> list[dict]:
    """One row per (model, site, ranking, category, k), the last recorded winning, ordered for reading."""
    unique = {(*(r[key] for key in GROUP_KEYS), r["k"]): r for r in rows}
    return [unique[key] for key in sorted(unique)]


def summarize(rows: Iterable[dict], cases: Mapping[tuple, CurveCases] | None = None) -> list[dict]:
    """Per (model, site, ranking, category): baselines, chance levels and the first k at stage 1 and stage 2;
    with `cases` (per curve: the ks its cases planned, notes on those that did not pass) also the planned ks
    that were not measured, so that an incomplete curve is never read as "no collapse"."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in latest_points(rows):
        groups[tuple(row[key] for key in GROUP_KEYS)].append(row)
    summary = []
    for key, points in groups.items():
        stages = [(p["k"], p["stage"]) for p in points]
        first = points[0]
        curve = (cases or {}).get(key, CurveCases())
        summary.append(
            {
                **dict(zip(GROUP_KEYS, key, strict=True)),
                "n_samples": first["n_samples"],
                "baselines": first["baselines"],
                "baseline_chance": first["baseline_chance"],
                "k_stage1": first_k_at_stage(stages, 1),
                "k_stage2": first_k_at_stage(stages, 2),
                "k_evaluated": [p["k"] for p in points],
                "k_unmeasured": sorted(curve.planned_ks - {p["k"] for p in points}),
                "monotone": is_monotone(stages),
                "case_notes": list(curve.notes),
            }
        )
    return summary


def _threshold(k: int | None, evaluated: list[int], unmeasured: Sequence[int] = ()) -> str:
    """The first k at a stage; "none ≤ k" only when every k up to there was measured, "?" when a smaller k
    (or, with none found, any planned k) was not."""
    if unmeasured and (k is None or min(unmeasured) < k):
        return "?"
    return str(k) if k is not None else f"none ≤ {max(evaluated)}"


@dataclass(frozen=True)
class Column:
    """One column of a table: its header, alignment (numbers right, text left) and cell of a row."""

    header: str
    value: Callable[[dict], object]
    align: str = "right"


def _text(header: str, value: Callable[[dict], object]) -> Column:
    return Column(header, value, "left")


CURVE_COLUMNS = [_text(key, lambda row, key=key: row[key]) for key in GROUP_KEYS]


def table_metrics(rows: Iterable[dict]) -> list[Metric]:
    """The metrics the rows' tables show: those their curves measured and declare for tables, in the order they
    were registered (harness.science.metric_registry)."""
    measured = {name for row in rows for name in row["baselines"]}
    return [get_metric(name) for name in registered_metrics() if name in measured and get_metric(name).in_tables]


def baseline_columns(metrics: Sequence[Metric]) -> list[Column]:
    """Each metric at k = 0 (`PPL₀`, `CLIP₀`), and its chance level where it has one."""
    columns = []
    for metric in metrics:
        columns.append(Column(f"{metric.title}₀", lambda row, m=metric: m.shown(row["baselines"].get(m.name))))
        if metric.chance_title:
            columns.append(
                Column(metric.chance_title, lambda row, m=metric: m.shown(row["baseline_chance"].get(m.name)))
            )
    return columns


def render_summary(summary: list[dict]) -> str:
    metrics = table_metrics(summary)
    columns = [
        *CURVE_COLUMNS,
        Column("n", lambda s: s["n_samples"]),
        *baseline_columns(metrics),
        Column("k₁ stage 1", lambda s: _threshold(s["k_stage1"], s["k_evaluated"], s.get("k_unmeasured", []))),
        Column("k₂ stage 2", lambda s: _threshold(s["k_stage2"], s["k_evaluated"], s.get("k_unmeasured", []))),
        Column("k grid", lambda s: _grid_label(s["k_evaluated"])),
        _text("notes", lambda s: "; ".join(_notes(s, metrics))),
    ]
    return _table(summary, columns)


def _table(rows: list[dict], columns: list[Column]) -> str:
    """A GitHub-style table; the probe and ranking columns only when the rows differ in them (the title names a
    single ranking)."""
    same = {key for key in SHOWN_WHEN_THEY_DIFFER if len({row.get(key) for row in rows}) <= 1}
    columns = [column for column in columns if column.header not in same]
    return tabulate(
        [[column.value(row) for column in columns] for row in rows],
        headers=[column.header for column in columns],
        tablefmt="github",
        disable_numparse=True,
        colalign=[column.align for column in columns],
    )


def _notes(summary_row: dict, metrics: Sequence[Metric]) -> list[str]:
    """Warnings a reader must see next to the thresholds (explained in the README)."""
    notes = list(summary_row.get("case_notes", ()))
    if summary_row.get("k_unmeasured"):
        notes.append("not measured: k " + ", ".join(map(str, summary_row["k_unmeasured"])))
    if not summary_row["monotone"]:
        notes.append("non-monotone")  # the stage falls again at a larger k
    for metric in metrics:  # a baseline at or past its chance level: that metric cannot tell collapse from it
        chance = summary_row["baseline_chance"].get(metric.name)
        baseline = summary_row["baselines"].get(metric.name)
        if chance is not None and baseline is not None and metric.at_chance(baseline, chance):
            notes.append(f"{metric.title}₀ ≤ {metric.chance_title}")
    return notes


def _grid_label(ks: list[int]) -> str:
    return f"{min(ks)}…{max(ks)} ({len(ks)} pts)" if len(ks) > 1 else str(ks[0])


def render_thresholds(analyses: list[dict], cases: Mapping[tuple, CurveCases] | None = None) -> str:
    """One row per searched curve: thresholds, cost, metrics at k₂, controls and where the k₂ set lives."""
    analyses = sorted(analyses, key=lambda a: tuple(a[key] for key in GROUP_KEYS))
    metrics = table_metrics(analyses)

    def at_k2(metric: Metric) -> Column:
        def cell(a: dict) -> str:
            if a["at_k2"] is None:
                return ""
            return metric.shown_at(a["at_k2"].get(metric.name), a["baselines"].get(metric.name))

        return Column(metric.k2_title, cell)

    def notes(a: dict) -> str:
        found = list((cases or {}).get(tuple(a[key] for key in GROUP_KEYS), CurveCases()).notes)
        if not a["monotone"]:
            found.append("non-monotone: " + ", ".join(f"{k}→{k2}" for k, k2 in a["violations"]))
        return "; ".join(found)

    columns = [
        *CURVE_COLUMNS,
        *baseline_columns(metrics),
        Column("k₁", lambda a: _threshold(a["k1"], [a["k_max"]])),
        Column("k₂", lambda a: _threshold(a["k2"], [a["k_max"]])),
        Column("evals", lambda a: str(a["evaluations"])),
        Column("passes", lambda a: str(len(a["passes"]))),
        *(at_k2(metric) for metric in metrics),
        _text("controls at k₂", lambda a: _controls_label(a) if a["k2"] is not None else ""),
        _text("layers of the k₂ set", lambda a: _where(a["layers"]) + _small_set(a)),
        _text("notes", notes),
    ]
    return _table(analyses, columns)


def _where(layers: dict[str, dict[str, int]]) -> str:
    """'L0:96 L1:85' for one site; 'lm.down_proj 181 (L0:96 L1:85) · lm.gate_proj 0' for a joint ranking."""
    spread = {site: " ".join(f"L{layer}:{n}" for layer, n in counts.items()) for site, counts in layers.items()}
    if len(layers) == 1:
        return next(iter(spread.values()))
    parts = [
        f"{site} {sum(counts.values())}" + (f" ({spread[site]})" if counts else "")
        for site, counts in layers.items()
    ]
    return " · ".join(parts)


SHOWN_K2_SET = 8  # a k₂ set this small is listed neuron by neuron


def _small_set(analysis: dict) -> str:
    """' — L11·507 L28·17': the neurons of a k₂ set of at most SHOWN_K2_SET, as (layer·channel)."""
    k2 = analysis["k2"]
    if k2 is None or k2 > SHOWN_K2_SET:
        return ""
    point = next(p for p in analysis["points"] if p["k"] == k2)
    several = len(analysis["layers"]) > 1
    names = [
        f"{site + ' ' if several else ''}L{layer}·{channel}" for site, layer, channel, _ in point["masked_neurons"]
    ]
    return " — " + " ".join(names)


def _controls_label(analysis: dict) -> str:
    """'hold' when no control collapses, else which ones do (a collapse is a finding only if they hold)."""
    collapsed = [c["intervention"] for c in analysis["controls"] if c["stage"] >= 2]
    if not collapsed:
        return f"hold ({len(analysis['controls'])})"
    return "COLLAPSE: " + "; ".join(name.replace(", zero ablation", "") for name in collapsed)


# how a point's metric records become CSV columns: metrics by their own names, the others suffixed
METRIC_COLUMNS = {
    "metrics": "",
    "baselines": "_baseline",
    "chance": "_chance",
    "baseline_chance": "_chance_baseline",
}


def _flat_row(point: dict) -> dict:
    """A point without its captions, as CSV columns: its metric records (`clip`, `clip_baseline`, `clip_chance`,
    …) and its options and provenance merged in (a name clash would lose a value)."""
    merged = ("options", "provenance")
    row = {key: value for key, value in point.items() if key not in ("captions", *merged, *METRIC_COLUMNS)}
    records = {
        name: {metric + suffix: value for metric, value in point[name].items()}
        for name, suffix in METRIC_COLUMNS.items()
    }
    records.update((name, point.get(name, {})) for name in merged)
    for name, record in records.items():
        clashes = set(row) & set(record)
        if clashes:
            raise ValueError(f"{name} names {sorted(clashes)} clash with point fields in the CSV report")
        row.update(record)
    return row


def write_reports(
    rows: list[dict],
    directory: Path,
    meta: dict,
    analyses: list[dict] | None = None,
    cases: Mapping[tuple, CurveCases] | None = None,
) -> tuple[Path, Path]:
    """`collapse.json` (meta, summary, the searched curves' analyses, every point with its captions),
    `collapse.csv` (one row per point) and, with analyses, `thresholds.csv`. All files are written to
    temporary names first and renamed into place only when every one of them was written: a failed write
    (a full disk) leaves the previous report as it was, whole."""
    directory.mkdir(parents=True, exist_ok=True)
    points = latest_points(rows)
    flat = [_flat_row(point) for point in points]  # before writing anything: a clash must not leave half a report
    json_path, csv_path = directory / "collapse.json", directory / "collapse.csv"
    document = {"meta": meta, "summary": summarize(points, cases), "analyses": analyses or [], "points": points}
    with ExitStack() as files:
        staged = lambda path: files.enter_context(atomic_files.replacing(path))  # noqa: E731
        staged(json_path).write_text(json.dumps(document, indent=2, allow_nan=False))
        _write_csv(staged(csv_path), flat)
        if analyses:  # one row per searched curve: thresholds, cost, metrics at k₂, controls (JSON), layers (JSON)
            _write_csv(staged(directory / THRESHOLDS_FILE), [_flat_analysis(a) for a in analyses])
    if not analyses:  # an earlier run's thresholds must not pass for this run's
        (directory / THRESHOLDS_FILE).unlink(missing_ok=True)
    return json_path, csv_path


def clear_stale(directory: Path, plots: Collection[Path], *, complete: bool) -> None:
    """After a report was written to `directory` with the plot files `plots`: remove every other file in
    `directory/plots` (curves of an earlier run that this one did not draw) and, for a complete report, the
    `incomplete/` folder it supersedes. An incomplete report is written to `incomplete/` itself, so it never
    removes anything of the last complete report."""
    kept = {Path(plot).name for plot in plots}
    plot_folder = directory / "plots"
    if plot_folder.is_dir():
        for path in plot_folder.iterdir():
            if path.name not in kept and (path.is_file() or path.is_symlink()):
                path.unlink()
    if complete and (directory / "incomplete").is_dir():
        shutil.rmtree(directory / "incomplete")


def claim_report_dir(directory: Path, command: str) -> Callable[[], None]:
    """Take `directory` for this run until the returned function is called; ValueError, naming the folder and
    the run holding it (pid, host, command), when another run has it. The lock is an OS file lock (flock): the
    OS releases it when its process ends, however it ends, so a crashed run never blocks the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"the report folder {directory} is in use by another run ({_owner(directory)}); wait until it ends, "
            "or pass --can-report-dir a folder of this run's own"
        ) from None
    owner = directory / OWNER_FILE
    try:
        record = {"pid": os.getpid(), "host": platform.node(), "command": command}
        atomic_files.write_text(owner, json.dumps(record) + "\n")
    except BaseException:
        lock.release()
        raise

    def release() -> None:
        owner.unlink(missing_ok=True)
        lock.release()

    return release


def _owner(directory: Path) -> str:
    """'pid 123 on host: `pytest …`', from the owner file of a held report folder."""
    try:
        record = json.loads((directory / OWNER_FILE).read_text())
        return f"pid {record['pid']} on {record['host']}: `{record['command']}`"
    except (OSError, ValueError, KeyError) as error:  # it is writing the file this very moment
        return f"which one cannot be told: {OWNER_FILE} is unreadable ({error})"


def check_report_dir(directory: Path) -> None:
    """Raise ValueError, before any case runs, when reports could not be written to `directory` (a file in the
    way, a folder without write access): a finished run must not be thrown away at its end."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"the report folder {directory} cannot be made: {existing} is a file, not a folder; pass "
            "--can-report-dir a folder (it is created if missing)"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(
            f"the report folder {directory} cannot be written ({existing}: {error.strerror or error}); pass "
            "--can-report-dir a folder you can write"
        ) from None


def _flat_analysis(analysis: dict) -> dict:
    return {key: value for key, value in analysis.items() if key not in ("points", "options")}


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()})
