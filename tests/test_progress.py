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


def test_a_silent_phase_says_it_still_runs_and_a_talking_one_does_not():
    lines: list[str] = []
    with progress.using(progress.Reporter(lines.append, heartbeat_s=0.1)):
        with progress.phase("cib"):
            time.sleep(0.35)
        with progress.phase("stages") as ph:
            for _ in range(8):
                time.sleep(0.04)
                ph.say("a line")
    beats = [line for line in lines if "still running" in line]
    assert len(beats) in (2, 3, 4) and all(line.startswith("    cib: still running, 0s so far") for line in beats)
    assert lines.index("==> stages") > lines.index(beats[-1])


def test_no_heartbeat_where_the_tool_draws_its_own_bar_on_a_terminal():
    class Terminal(progress.Reporter):
        tools_draw_progress = True
    for reporter, beats_expected in ((Terminal(heartbeat_s=0.05), False), (progress.Reporter(heartbeat_s=0.05), True)):
        lines: list[str] = []
        reporter.write = lines.append
        with progress.using(reporter), progress.phase("mmdebstrap", tool_draws_progress=True):
            time.sleep(0.2)
        assert any("still running" in line for line in lines) == beats_expected, lines


def test_the_plain_heartbeat_and_minutes():
    assert progress.PlainReporter.heartbeat_s == 30 and output.RichReporter.heartbeat_s == 10
    assert progress._clock(5) == "5s" and progress._clock(125) == "2m05s"


def test_a_plain_transfer_writes_a_line_per_quarter(capsys):
    with progress.using(progress.PlainReporter()), progress.transfer("reading back /dev/sdz", 400 << 20) as bar:
        for done in range(0, 401, 10):
            bar(done << 20, 400 << 20)
    err = capsys.readouterr().err.splitlines()
    assert [re.sub(r"^\[[\d:]+\] ", "", line).split(" (")[0] for line in err] == [
        f"    reading back /dev/sdz: {p}% of 400 MiB" for p in (25, 50, 75, 100)]
