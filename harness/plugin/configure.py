"""Setting a run up and ending it: the `--can-*` options, the markers, the settings and baselines, the report
folder and its recorder on the controller, each xdist worker's share of the cores, and the xdist scheduler."""

from __future__ import annotations

import os
import sys

import pytest

from harness.core.errors import HarnessError
from harness.plugin.markers import register_markers
from harness.plugin.progress_routing import restore_progress, route_progress
from harness.plugin.recorder import CollapseRecorder, report_dir
from harness.plugin.run_settings import baselines_from_config, settings_from_config
from harness.plugin.stash import BASELINES, SETTINGS


def pytest_addoption(parser: pytest.Parser) -> None:
    from harness.plugin.options import OPTIONS

    group = parser.getgroup("can", "critical-neuron collapse harness")
    for option in OPTIONS:
        group.addoption(option.flag, **option.pytest_kwargs())


def pytest_configure(config: pytest.Config) -> None:
    register_markers(config)
    try:
        config.stash[SETTINGS] = settings_from_config(config)
        config.stash[BASELINES] = baselines_from_config(config)
    except (ValueError, HarnessError) as error:
        raise pytest.UsageError(f"harness option: {error}") from error
    route_progress(config)
    worker = getattr(config, "workerinput", None)
    if worker is None:
        from harness.reporting.report import check_report_dir

        try:
            check_report_dir(report_dir(config))
        except ValueError as error:
            raise pytest.UsageError(f"harness option --can-report-dir: {error}") from None
        recorder = CollapseRecorder(config)
        if _distributed(config):  # its workers collect: nothing tells the controller which cases they hold
            recorder.claim_report_dir()
        _interrupt_on_sigterm(config)
        config.pluginmanager.register(recorder, "can-collapse-recorder")
    else:
        _share_cores(int(worker.get("workercount", 1)))


def pytest_unconfigure(config: pytest.Config) -> None:
    restore_progress(config)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `-n N` (default `--dist load`, or `--dist loadgroup`) send each model's (or each curve's) cases to
    one worker.

    xdist's own loadgroup cannot be relied on: with pytest ≥ 9.2 its `@group` node-id suffix is lost
    (pytest-dev/pytest-xdist#1386), so this scheduler reads the group from the case id instead.
    """
    explicit = any(arg == "--dist" or arg.startswith("--dist=") for arg in config.invocation_params.args)
    dist = config.getoption("dist")
    if dist == "loadgroup" or (dist == "load" and not explicit):
        from harness.plugin.scheduling import CollapseCaseScheduling  # imports xdist's scheduler: only here

        return CollapseCaseScheduling(config, log, by=config.getoption("can_dist_group"))
    return None


def _share_cores(workers: int) -> None:
    """An xdist worker's share of the cores: torch's threads where torch is loaded already, else (so that a run
    without collapse cases loads no torch) the OMP_NUM_THREADS torch reads when it loads, unless one is set."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _distributed(config: pytest.Config) -> bool:
    """Whether this is the controller of an xdist run (`-n N`, N ≥ 1)."""
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a job scheduler's stop, `kill`) ends the run like Ctrl-C: the cases stop, and the report is
    written, marked incomplete, instead of the process dying with nothing said. Only where nobody else has
    claimed SIGTERM."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
