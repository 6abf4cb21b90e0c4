"""The run's record on the xdist controller (or the only process): the points and analyses that cases recorded,
how every collected case ended, then the JSON/CSV reports, the plots and the summary tables."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from harness.plugin.case_ids import curve_of
from harness.plugin.markers import MARKERS
from harness.plugin.outcome import RunOutcome
from harness.plugin.stash import SETTINGS

# user properties a case's report carries to the recorder (from an xdist worker too): one JSON row each
POINT_PROPERTY = "can_point"
ANALYSIS_PROPERTY = "can_analysis"


def report_dir(config: pytest.Config) -> Path:
    """Where the reports go: `--can-report-dir`, else `<rootdir>/can-results`."""
    return Path(config.getoption("can_report_dir") or config.rootpath / "can-results")


class CollapseRecorder:
    """Collects the points recorded by cases (from workers too, via report.user_properties) and how every
    collected case ended, then writes the reports and prints the tables on the controller. A run that was
    interrupted, had errors or left cases unfinished writes its report marked incomplete to `incomplete/`, so
    the last complete report stays as it was; a complete report removes the plots it did not draw and the
    superseded `incomplete/`.

    The report folder is held by one run at a time, from before its first case to its end: a second run asking
    for it meanwhile is a usage error naming the other run. A serial run takes it once collection found collapse
    cases (a run of other tests — the harness's own test suite, with the default folder — writes no report and
    takes nothing, so such runs never refuse each other); an xdist controller, which never sees its workers'
    collected items, takes it at configure time."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.rows: list[dict] = []
        self.analyses: dict[tuple, dict] = {}  # (model, site, ranking, category) → analysis row
        self.outcome = RunOutcome()
        self.case_curves: dict[tuple, set[str]] = defaultdict(set)  # curve → curve node ids of its cases
        self.reports: tuple[Path, Path] | None = None
        self.write_error: str | None = None
        self.holds_report_dir = False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.outcome.collected = [item.nodeid for item in session.items]
        if any(item.get_closest_marker(name) for item in session.items for name in MARKERS):
            self.claim_report_dir()

    def claim_report_dir(self) -> None:
        """Hold the report folder until the run ends (released at unconfigure; by the OS if the run dies); once
        (`-n N --collect-only` collects on the controller after taking it at configure time)."""
        from harness.reporting.report import claim_report_dir

        if self.holds_report_dir:
            return
        command = " ".join(["pytest", *self.config.invocation_params.args])
        try:
            release = claim_report_dir(report_dir(self.config), command)
        except (ValueError, OSError) as error:
            raise pytest.UsageError(f"harness option --can-report-dir: {error}") from None
        self.config.add_cleanup(release)
        self.holds_report_dir = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self.outcome.collected = list(ids)  # every worker collects the same ids

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        self.outcome.interrupted = f"interrupted ({str(excinfo.value) or excinfo.typename})"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from harness.reporting.report import GROUP_KEYS

        self.outcome.record(report)
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name not in (POINT_PROPERTY, ANALYSIS_PROPERTY):
                continue
            row = json.loads(value)
            group = tuple(row[key] for key in GROUP_KEYS)
            self.case_curves[group].add(curve_of(report.nodeid)[0])
            if name == POINT_PROPERTY:
                self.rows.append(row)
            else:
                self.analyses[group] = row

    def curve_cases(self) -> dict:
        return {group: self.outcome.curve_cases(curves) for group, curves in self.case_curves.items()}

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if session.shouldfail and self.outcome.interrupted is None:
            self.outcome.interrupted = f"stopped early ({session.shouldfail})"
        if exitstatus == pytest.ExitCode.INTERRUPTED and self.outcome.interrupted is None:
            self.outcome.interrupted = "interrupted"
        if not self.rows and not self.analyses:
            return
        from harness.reporting.report import clear_stale, provenance, write_reports

        config = self.config
        directory = report_dir(config) / ("" if self.outcome.complete else "incomplete")
        meta = provenance(config.rootpath)
        meta["command"] = " ".join(config.invocation_params.args)
        meta.update(self.outcome.meta())
        try:
            analyses = list(self.analyses.values())
            self.reports = write_reports(self.rows, directory, meta, analyses, self.curve_cases())
            from harness.reporting.plots import plot_analysis, plot_file_name

            plots = [plot_analysis(row, directory / "plots" / plot_file_name(row)) for row in analyses]
            clear_stale(directory, plots, complete=self.outcome.complete)
        except OSError as error:  # a full disk, a folder removed during the run: say so, keep the tables
            self.write_error = (
                f"the report could not be written to {directory} ({error}); the previous report there is "
                "untouched, and the tables above are this run's results"
            )
            session.exitstatus = session.exitstatus or pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows and not self.analyses:
            return

        from harness.reporting.report import latest_points, render_summary, render_thresholds, summarize
        from harness.runner.curve import format_curve, row_label
        from harness.runner.experiment import CollapsePoint

        settings = self.config.stash[SETTINGS]
        rankings = {row["ranking"] for row in [*self.rows, *self.analyses.values()]}
        method = next(iter(rankings)) if len(rankings) == 1 else "several rankings"
        cases = self.curve_cases()
        if self.rows:
            terminalreporter.write_sep("=", f"critical-neuron collapse ({method})")
            terminalreporter.write_line(render_summary(summarize(self.rows, cases)))
        if self.analyses:
            terminalreporter.write_sep(
                "=", f"two-stage thresholds ({method}; {settings.search} search, controls at k₂)"
            )
            terminalreporter.write_line(render_thresholds(list(self.analyses.values()), cases))
        if self.config.getoption("can_show_curves"):
            points = latest_points(self.rows)
            groups: dict[str, list] = {}
            for point in points:
                groups.setdefault(row_label(point), []).append(CollapsePoint(**point))
            for label, curve in sorted(groups.items()):
                terminalreporter.write_line(f"\n{label}\n{format_curve(curve)}")
        if self.write_error is not None:
            terminalreporter.write_line(f"REPORT NOT WRITTEN: {self.write_error}", red=True)
        if not self.outcome.complete:
            unfinished = self.outcome.unfinished
            listed = ", ".join(unfinished[:8]) + (f", … ({len(unfinished)} in all)" if len(unfinished) > 8 else "")
            terminalreporter.write_line(
                f"INCOMPLETE RUN: {self.outcome.reason()}"
                + (f"; not measured: {listed}" if unfinished else "")
                + ". The report is marked incomplete and the last complete one is untouched.",
                red=True,
            )
        if self.reports is not None:
            terminalreporter.write_line(f"reports: {self.reports[0]}  {self.reports[1]}")
