"""Progress lines of long work (rankings, searches, conversions) shown while pytest captures the output: on the
controller through the terminal reporter, on an xdist worker through its standard error (which xdist leaves on
the terminal)."""

from __future__ import annotations

import contextlib
import sys

import pytest

from harness.plugin.stash import PROGRESS


def route_progress(config: pytest.Config) -> None:
    """Send harness.core.progress's lines past pytest's capture for this run (put back by restore_progress)."""
    from harness.core import progress

    worker = getattr(config, "workerinput", {}).get("workerid")
    config.stash[PROGRESS] = progress.snapshot()  # put back when this run ends

    def uncaptured():
        capture = config.pluginmanager.getplugin("capturemanager")
        return capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()

    def write(line: str) -> None:
        with uncaptured():
            reporter = config.pluginmanager.getplugin("terminalreporter")
            if worker is None and reporter is not None:
                if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
                    reporter.write("\n")  # after a line of progress dots
                reporter.write_line(line)
            else:
                sys.stderr.write(f"[{worker}] {line}\n" if worker else line + "\n")
                sys.stderr.flush()

    try:
        progress.configure(write=write, passthrough=uncaptured, interval=config.getoption("can_progress_interval"))
    except ValueError as error:
        raise pytest.UsageError(f"harness option --can-progress-interval: {error}") from error


def restore_progress(config: pytest.Config) -> None:
    """Put back the progress routing this run replaced (pytester runs many in one process)."""
    from harness.core import progress

    if PROGRESS in config.stash:
        progress.restore(config.stash[PROGRESS])
