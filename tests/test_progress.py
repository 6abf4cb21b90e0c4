"""Progress lines of long work: quiet while work is quick, a line per interval when it is slow, and through
pytest's output capture when the plugin runs."""

from __future__ import annotations

import pytest

from harness.core import progress

pytest_plugins = ["pytester"]


@pytest.fixture
def lines():
    saved = progress.snapshot()
    written: list[str] = []
    progress.configure(write=written.append, interval=0)
    yield written
    progress.restore(saved)


def test_every_step_prints_at_interval_zero_with_count_time_and_detail(lines):
    with progress.task("ranking m", total=2) as task:
        task.step("batch 1")
        task.step()
    assert lines[0].startswith("[can] ranking m: 1/2 (0 s, ~0 s left) batch 1")
    assert lines[1].startswith("[can] ranking m: 2/2 (0 s)")
    assert lines[2] == "[can] ranking m: done in 0 s"


def test_quick_work_prints_nothing(lines):
    progress.configure(interval=3600)
    with progress.task("search", total=None) as task:
        task.step()
    assert lines == []
    progress.announce("converting x")  # announced work prints whatever the interval
    assert lines == ["[can] converting x"]


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="≥ 0, got -1"):
        progress.configure(interval=-1)


def test_lines_reach_the_terminal_past_pytests_capture(pytester):
    pytester.makepyfile(
        test_slow="""
        from harness.core import progress

        def test_long_work():
            with progress.task("long work", total=2) as task:
                task.step()
                task.step()
        """
    )
    outer = progress.snapshot()  # this session's own routing, which the nested run must put back
    result = pytester.runpytest("-p", "no:cacheprovider", "--can-progress-interval", "0")
    assert progress.snapshot() == outer
    result.assert_outcomes(passed=1)
    assert "[can] long work: 1/2" in "\n".join(result.outlines)
    bad = pytester.runpytest("-p", "no:cacheprovider", "--can-progress-interval", "-2")
    assert (
        bad.ret != 0
        and "--can-progress-interval: progress interval must be a number of seconds ≥ 0, got -2.0"
        in "\n".join(bad.errlines + bad.outlines)
    )
