"""How the core's progress (builder.progress) looks: rich on a terminal, timestamped plain lines otherwise."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.text import Text

from builder import progress


class RichReporter(progress.Reporter):
    """For a person at a terminal: phases stand out, their durations are dimmed, a transfer is a live bar.

    No live display spans a phase: the tools a phase runs (mmdebstrap, bmaptool) write to the same terminal, and
    those two draw their own bars there. Any other phase says it still runs after 10 s of silence."""

    heartbeat_s = 10.0
    tools_draw_progress = True

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def _print(self, *parts) -> None:
        # soft_wrap: a long line stays one line (the terminal wraps it), so it can be copied whole.
        self.console.print(Text.assemble(*parts), highlight=False, soft_wrap=True)

    def line(self, text: str) -> None:
        self._print((time.strftime("%H:%M:%S "), "dim"), text)

    def phase_started(self, what: str) -> None:
        self._print(("==> ", "bold cyan"), (what, "bold"))

    def phase_line(self, what: str, text: str, elapsed: float) -> None:
        self._print("    ", text, (f"  +{elapsed:.0f}s", "dim"))

    def phase_done(self, what: str, elapsed: float) -> None:
        self._print(("    ✓ ", "green"), what, (f"  done in {elapsed:.1f}s", "dim"))

    def phase_heartbeat(self, what: str, elapsed: float) -> None:
        self._print(("    … ", "dim"), (f"{what}: still running", "dim"), (f"  +{elapsed:.0f}s", "dim"))

    @contextlib.contextmanager
    def transfer(self, what: str, total: int | None, done: int) -> Iterator[progress.TransferHook]:
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=self.console, transient=True) as bar:
            task = bar.add_task(what, total=total, completed=done)
            yield lambda done, total: bar.update(task, completed=done, total=total)


def reporter_for(stream: TextIO, terminal: bool | None = None) -> progress.Reporter:
    """The reporter for progress written to `stream` (stderr): rich when it is a terminal."""
    if terminal is None:
        terminal = stream.isatty()
    if terminal:
        return RichReporter(Console(file=stream, force_terminal=True))
    return progress.PlainReporter()
