"""A root shell on a guest's serial console, through pexpect: commands and their output between unique markers."""

from __future__ import annotations

import os
import re
import time

import pexpect

from builder.errors import PibuildError

# Terminal colour and cursor sequences (ESC [ ... letter): some programs colour their output whatever TERM says
# (trixie's iproute2 colours `ip` on any terminal unless NO_COLOR is set).
ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ConsoleError(PibuildError):
    """The console did not answer in time, or QEMU went away."""


class ConsoleTimeout(ConsoleError):
    """A command did not finish in time. The console stays usable: the next command's markers are unique, so its
    late output is skipped."""


class Console:
    """A root shell on the guest's serial console, through pexpect.

    Every command's output is read between two markers the shell prints (`printf` assembles them, so the typed
    command never contains them), which keeps parsing robust against kernel and systemd messages on the console.
    """

    SHELL_SETUP = ("stty -echo cols 250 rows 50; dmesg -n 1; unset HISTFILE; "
                   "export TERM=dumb NO_COLOR=1 LC_ALL=C PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 COLUMNS=250")

    def __init__(self, child: pexpect.spawn, note=None):
        self.child = child
        self._note = note or (lambda text: None)
        self._nonce = os.urandom(3).hex()
        self._count = 0

    def expect(self, pattern, timeout: float):
        try:
            return self.child.expect(pattern, timeout=max(timeout, 0.1))
        except pexpect.EOF:
            raise ConsoleError("QEMU exited (see the serial log)") from None

    def wait_login_prompt(self, timeout: float) -> None:
        try:
            self.expect(r"login: ", timeout)
        except pexpect.TIMEOUT:
            raise ConsoleTimeout(f"no login prompt on the serial console within {timeout:.0f} s") from None

    def login(self, timeout: float) -> None:
        """Wait for the autologin shell: type a marker command until it answers (typed-ahead text may be flushed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run(self.SHELL_SETUP, timeout=min(15.0, max(deadline - time.monotonic(), 0.1)))
                return
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(f"no root shell on the serial console within {timeout:.0f} s after the "
                                       "login prompt (autologin drop-in not honoured?)") from None

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run one shell command line; its exit status and output (stdout and stderr, \\r and colours removed)."""
        self._count += 1
        tag = f"{self._nonce}x{self._count}"
        self._note(command)
        self.child.send(f"printf '\\n%s%s\\n' @@B {tag}; {{ {command} ; }} 2>&1; "
                        f"printf '\\n%s%s %s\\n' @@E {tag} $?\n")
        deadline = time.monotonic() + timeout
        try:
            # Lines arrive as \r\r\n: the guest's tty and the host's pty both turn \n into \r\n.
            self.expect(f"@@B{tag}\r*\n", timeout)
            self.expect(f"@@E{tag} (\\d+)", deadline - time.monotonic())
        except pexpect.TIMEOUT:
            raise ConsoleTimeout(f"`{command}` did not finish within {timeout:.0f} s") from None
        rc = int(self.child.match.group(1))
        return rc, ANSI_SEQUENCE.sub("", self.child.before.replace("\r", "")).strip("\n")
