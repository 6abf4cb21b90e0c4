"""Progress of long work — ranking batches, the evaluated k of a search, a first-use checkpoint conversion — as
a line now and then, so that a run on a real model is never silent for minutes.

A task prints nothing while it is quick: a line appears only once `interval` seconds have passed since the task
began or since its last line, and a closing line only if it printed anything. Lines go to a writer: standard error
by default; the pytest plugin installs one that writes past pytest's output capture (on the controller through the
terminal reporter, on an xdist worker to the inherited standard error, prefixed with the worker's name).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

DEFAULT_INTERVAL = 10.0  # seconds between lines of one task


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@dataclass
class _Output:
    write: Callable[[str], None] = _stderr_line
    # lets other programs' own progress bars (transformers' tqdm) reach the terminal while it is active
    passthrough: Callable[[], AbstractContextManager] = nullcontext
    interval: float = DEFAULT_INTERVAL


_output = _Output()


def configure(
    write: Callable[[str], None] | None = None,
    passthrough: Callable[[], AbstractContextManager] | None = None,
    interval: float | None = None,
) -> None:
    """Replace the writer, the passthrough context or the interval (None keeps the current one)."""
    if interval is not None and not interval >= 0:
        raise ValueError(f"progress interval must be a number of seconds ≥ 0, got {interval!r}")
    if write is not None:
        _output.write = write
    if passthrough is not None:
        _output.passthrough = passthrough
    if interval is not None:
        _output.interval = interval


def snapshot() -> _Output:
    """The current writer, passthrough and interval, for `restore` (a nested pytest run puts back the outer
    run's routing when it ends)."""
    return dataclasses.replace(_output)


def restore(saved: _Output) -> None:
    configure(saved.write, saved.passthrough, saved.interval)


def announce(message: str) -> None:
    """One line now, whatever the interval: for work whose length is known to be long before it starts."""
    _output.write(f"[can] {message}")


def passthrough() -> AbstractContextManager:
    """Inside the block, output of other code (e.g. a library's progress bar) reaches the terminal."""
    return _output.passthrough()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Task:
    """One piece of long work with `total` steps (None: unknown)."""

    def __init__(self, name: str, total: int | None = None):
        self.name, self.total = name, total
        self.done = 0
        self.started = self._last = time.monotonic()
        self.printed = False

    def step(self, detail: str = "", steps: int = 1) -> None:
        """`steps` more steps done; prints a line if the interval has passed since the last one."""
        self.done += steps
        now = time.monotonic()
        if now - self._last < _output.interval:
            return
        self._last, self.printed = now, True
        elapsed = now - self.started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        left = ""
        if self.total and 0 < self.done < self.total:
            left = f", ~{_duration(elapsed * (self.total - self.done) / self.done)} left"
        _output.write(f"[can] {self.name}: {count} ({_duration(elapsed)}{left}){' ' + detail if detail else ''}")

    def finish(self) -> None:
        if self.printed:
            _output.write(f"[can] {self.name}: done in {_duration(time.monotonic() - self.started)}")


@contextmanager
def task(name: str, total: int | None = None) -> Iterator[Task]:
    """`with task("ranking …", total=n) as t: … t.step()`: lines only if the work is slow (see the module)."""
    current = Task(name, total)
    yield current
    current.finish()
