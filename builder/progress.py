"""Progress: how the core tells the user what it is doing, without knowing how that is shown.

The core calls the three functions of this module:

    progress.say("raspios: cached …")                 one line
    with progress.phase("stages") as ph:              a named step; its start and its duration are reported
        ph.say("stage 00-packages")                   a line inside it (ph.elapsed(): seconds since it began)
    with progress.transfer(name, total, done) as bar: a byte count that moves (a download): bar(done, total)

and a Reporter renders them. The command line installs its own (builder.cli.render: rich on a terminal, plain lines
otherwise) with `using()`; without one, plain timestamped lines go to stderr, so bench scripts and tests see them.
Results (a report, a table, JSON) are not progress: the command line prints those itself, on stdout.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

TransferHook = Callable[[int, "int | None"], None]


class Reporter:
    """Receives the core's progress. This one turns every event into a line for `write` (default: nothing)."""

    def __init__(self, write: Callable[[str], None] | None = None):
        self.write = write or (lambda line: None)

    def line(self, text: str) -> None:
        self.write(text)

    def phase_started(self, what: str) -> None:
        self.line(f"==> {what}")

    def phase_line(self, what: str, text: str, elapsed: float) -> None:
        self.line(text)

    def phase_done(self, what: str, elapsed: float) -> None:
        self.line(f"    {what}: done in {elapsed:.1f}s")

    @contextlib.contextmanager
    def transfer(self, what: str, total: int | None, done: int) -> Iterator[TransferHook]:
        """A byte count that moves; lines would only flood a log, so by default nothing is shown."""
        yield lambda done, total: None


def _stderr_with_clock(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class PlainReporter(Reporter):
    """Timestamped lines on stderr: for logs, CI, a pipe."""

    def __init__(self):
        super().__init__(_stderr_with_clock)


_DEFAULT = PlainReporter()
_current: ContextVar[Reporter | None] = ContextVar("pibuild_reporter", default=None)


def current() -> Reporter:
    return _current.get() or _DEFAULT


@contextlib.contextmanager
def using(reporter: Reporter) -> Iterator[Reporter]:
    """Report through `reporter` inside the block."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


def say(text: str) -> None:
    current().line(text)


@dataclass
class Phase:
    what: str
    started: float

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        current().phase_line(self.what, text, self.elapsed())


@contextlib.contextmanager
def phase(what: str) -> Iterator[Phase]:
    """Announce a phase; when it ends without an error, report how long it took."""
    reporter = current()
    reporter.phase_started(what)
    ph = Phase(what, time.monotonic())
    yield ph
    reporter.phase_done(what, ph.elapsed())


def transfer(what: str, total: int | None, done: int = 0) -> contextlib.AbstractContextManager[TransferHook]:
    return current().transfer(what, total, done)
