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
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

TransferHook = Callable[[int, "int | None"], None]


class Reporter:
    """Receives the core's progress. This one turns every event into a line for `write` (default: nothing).

    `heartbeat_s`: after this long without a line inside a phase, the phase reports that it still runs (None: never).
    `tools_draw_progress`: the tools a phase runs draw their own progress here (a terminal), so a phase that says so
    gets no heartbeat from us."""

    heartbeat_s: float | None = None
    tools_draw_progress = False

    def __init__(self, write: Callable[[str], None] | None = None, heartbeat_s: float | None = None):
        self.write = write or (lambda line: None)
        if heartbeat_s is not None:
            self.heartbeat_s = heartbeat_s

    def line(self, text: str) -> None:
        self.write(text)

    def phase_started(self, what: str) -> None:
        self.line(f"==> {what}")

    def phase_line(self, what: str, text: str, elapsed: float) -> None:
        self.line(text)

    def phase_done(self, what: str, elapsed: float) -> None:
        self.line(f"    {what}: done in {elapsed:.1f}s")

    def phase_heartbeat(self, what: str, elapsed: float) -> None:
        self.line(f"    {what}: still running, {_clock(elapsed)} so far")

    @contextlib.contextmanager
    def transfer(self, what: str, total: int | None, done: int) -> Iterator[TransferHook]:
        """A byte count that moves; lines would only flood a log, so by default nothing is shown."""
        yield lambda done, total: None


def _stderr_with_clock(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class PlainReporter(Reporter):
    """Timestamped lines on stderr: for logs, CI, a pipe. A log shows a long phase is alive every half minute."""

    heartbeat_s = 30.0

    def __init__(self):
        super().__init__(_stderr_with_clock)

    @contextlib.contextmanager
    def transfer(self, what: str, total: int | None, done: int) -> Iterator[TransferHook]:
        """A line at every quarter of a known total (a log gets no bar), with the rate."""
        started, shown = time.monotonic(), [done * 4 // total if total else 0]

        def hook(done: int, total: int | None) -> None:
            if not total:
                return
            quarter = done * 4 // total
            if quarter > shown[0]:
                shown[0] = quarter
                rate = done / max(time.monotonic() - started, 1e-6)
                self.line(f"    {what}: {done * 100 // total}% of {total >> 20} MiB ({rate / 2**20:.0f} MiB/s)")
        yield hook


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


# When anything was last said (a phase's start, a line inside it or outside it, a heartbeat): a heartbeat only
# fills silence, and nested phases share it, so they do not beat twice.
_last_said = [time.monotonic()]


def say(text: str) -> None:
    _last_said[0] = time.monotonic()
    current().line(text)


@dataclass
class Phase:
    what: str
    started: float

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        _last_said[0] = time.monotonic()
        current().phase_line(self.what, text, self.elapsed())


@contextlib.contextmanager
def phase(what: str, tool_draws_progress: bool = False) -> Iterator[Phase]:
    """Announce a phase; when it ends without an error, report how long it took. While it runs, a reporter with a
    heartbeat says it still runs whenever it has said nothing for that long (not where `tool_draws_progress` and
    the reporter's output is where the tool draws its own bar: mmdebstrap and bmaptool on a terminal)."""
    reporter = current()
    reporter.phase_started(what)
    ph = Phase(what, time.monotonic())
    _last_said[0] = ph.started
    every = None if tool_draws_progress and reporter.tools_draw_progress else reporter.heartbeat_s
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(reporter, ph, every, stop), daemon=True) if every else None
    if beat:
        beat.start()
    try:
        yield ph
    finally:
        stop.set()
        if beat:
            beat.join()
    reporter.phase_done(what, ph.elapsed())


def _heartbeat(reporter: Reporter, ph: Phase, every: float, stop: threading.Event) -> None:
    while not stop.wait(max(0.05, _last_said[0] + every - time.monotonic())):
        if time.monotonic() - _last_said[0] >= every:
            _last_said[0] = time.monotonic()  # a heartbeat is a line too: the next one comes `every` later
            reporter.phase_heartbeat(ph.what, ph.elapsed())


def transfer(what: str, total: int | None, done: int = 0) -> contextlib.AbstractContextManager[TransferHook]:
    return current().transfer(what, total, done)
