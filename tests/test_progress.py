"""builder.progress: the core's one way to report, and the command line's two renderings of it."""

from __future__ import annotations

import io
import re
import time

import pytest

from builder import progress
from builder.cli import output


def test_a_phase_reports_its_start_its_lines_and_its_duration():
    lines: list[str] = []
    with progress.using(progress.Reporter(lines.append)):
        with progress.phase("stages") as ph:
            time.sleep(0.2)
            ph.say("stage 00-packages")
        progress.say("after")
    assert lines[0] == "==> stages" and lines[1] == "stage 00-packages" and lines[3] == "after"
    seconds = float(re.fullmatch(r"    stages: done in (\d+\.\d)s", lines[2]).group(1))
    assert 0.2 <= seconds < 5


def test_a_failed_phase_reports_no_duration():
    lines: list[str] = []
    with progress.using(progress.Reporter(lines.append)), pytest.raises(RuntimeError):
        with progress.phase("stages"):
            raise RuntimeError("boom")
    assert lines == ["==> stages"]


def test_using_restores_the_previous_reporter():
    outer: list[str] = []
    with progress.using(progress.Reporter(outer.append)):
        with progress.using(progress.Reporter()):
            progress.say("inner")
        progress.say("outer")
    assert outer == ["outer"]


def test_plain_lines_on_stderr_carry_the_time(capsys):
    with progress.using(output.reporter_for(io.StringIO(), terminal=False)):
        progress.say("hello")
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] hello\n", capsys.readouterr().err)


def test_rich_on_a_terminal_draws_phases_and_a_transfer_bar():
    stream = io.StringIO()
    with progress.using(output.reporter_for(stream, terminal=True)):
        with progress.phase("download"):
            with progress.transfer("image.partial", 100, 0) as bar:
                bar(50, 100)
                bar(100, 100)
    text = stream.getvalue()
    assert "\x1b[" in text                          # styled for a terminal
    assert "==> " in text and "download" in text and "done in" in text
    assert "image.partial" in text                  # the bar, drawn (and cleared) on the same stream
