"""What happened to each collected case of a run: passed, failed (a domain assertion), error (an exception, a
setup or teardown failure), skipped, or never finished (interrupted, stopped by -x) — so that a report says
whether it is complete, and a table never shows a threshold for a curve that was not measured.

A case is matched to its curve by its node id (harness.plugin.case_ids), which is how a case that never ran is
matched to the curve whose other points were recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness.core.run_outcome import CurveCases
from harness.plugin.case_ids import curve_of

RAISED_PROPERTY = "can_raised"  # user property set on a call report whose exception was not an assertion


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Tell a failed domain assertion from an exception (on the process that ran the case, so it reaches the
    xdist controller with the report): an exception makes the run's report incomplete."""
    report = yield
    expected = (AssertionError, pytest.fail.Exception, pytest.skip.Exception)
    if call.when == "call" and call.excinfo is not None and not call.excinfo.errisinstance(expected):
        report.user_properties.append((RAISED_PROPERTY, call.excinfo.typename))
    return report


@dataclass
class RunOutcome:
    """The run's collected case ids and each finished case's outcome (the pytest plugin feeds it reports)."""

    collected: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # node id → passed | failed | error | skipped
    interrupted: str | None = None  # why the run stopped early (KeyboardInterrupt, SIGTERM, -x)

    def record(self, report) -> None:
        """Fold in one pytest TestReport (setup, call or teardown)."""
        nodeid = report.nodeid
        if report.when == "setup" and not report.passed:
            self.outcomes[nodeid] = "skipped" if report.skipped else "error"
        elif report.when == "call":
            raised = any(name == RAISED_PROPERTY for name, _ in report.user_properties)
            self.outcomes[nodeid] = report.outcome if not (report.failed and raised) else "error"
        elif report.when == "teardown" and report.failed:
            self.outcomes[nodeid] = "error"

    def with_outcome(self, outcome: str) -> list[str]:
        return [nodeid for nodeid, value in self.outcomes.items() if value == outcome]

    @property
    def unfinished(self) -> list[str]:
        return [nodeid for nodeid in self.collected if nodeid not in self.outcomes]

    @property
    def complete(self) -> bool:
        return self.interrupted is None and not self.with_outcome("error") and not self.unfinished

    def reason(self) -> str | None:
        """Why the run is incomplete, in a line (None when it is complete)."""
        parts = [self.interrupted] if self.interrupted else []
        errors, unfinished = self.with_outcome("error"), self.unfinished
        if errors:
            parts.append(f"{len(errors)} case(s) raised an error")
        if unfinished:
            parts.append(f"{len(unfinished)} of {len(self.collected)} case(s) never finished")
        return "; ".join(parts) or None

    def meta(self) -> dict:
        return {
            "complete": self.complete,
            "incomplete_reason": self.reason(),
            "cases": {
                outcome: len(self.with_outcome(outcome)) for outcome in ("passed", "failed", "error", "skipped")
            }
            | {"unfinished": len(self.unfinished)},
            "error_cases": self.with_outcome("error"),
            "failed_cases": self.with_outcome("failed"),
            "unfinished_cases": self.unfinished,
        }

    def curve_cases(self, curves: set[str]) -> CurveCases:
        return CurveCases(frozenset(self.planned_ks(curves)), tuple(self.case_notes(curves)))

    def planned_ks(self, curves: set[str]) -> set[int]:
        """The ks of the collected grid cases of these curves (curve node ids, as case_ids.curve_of gives them)."""
        planned = (curve_of(nodeid) for nodeid in self.collected or self.outcomes)
        return {k for part, k in planned if part in curves and k is not None}

    def case_notes(self, curves: set[str]) -> list[str]:
        """Notes on the cases of these curves that did not pass: a row must not look like the others'."""
        outcomes = [value for nodeid, value in self.outcomes.items() if curve_of(nodeid)[0] in curves]
        notes = []
        for outcome, label in (("failed", "FAILED"), ("error", "raised an error")):
            if outcome in outcomes:
                notes.append(f"{outcomes.count(outcome)} case(s) {label}")
        return notes
