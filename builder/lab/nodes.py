"""The lab's VMs: each node's QEMU (built by builder.qemu, detached inside the lab's namespace), its power, and a
root shell on its serial console that any process can attach to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from builder import netns, qemu, tools
from builder.errors import PibuildError
from builder.lab.state import Lab, LabNode

MEMORY_MB = 768
BOOT_TIMEOUT = 300          # to the login prompt (TCG, a loaded machine)
# A loaded host stalls the guests: `login` itself may time out (60 s) once before the autologin shell answers.
LOGIN_TIMEOUT = 300


# ---- power ---------------------------------------------------------------------------------------------------

def prepare_vm(lab: Lab, node: LabNode, image: Path) -> None:
    """The node's overlay and boot files, and the QEMU command line that start_vm() runs (kept for a restart)."""
    vm = qemu.Vm(image=image, workdir=node.dir, serial_log=node.log, name=node.name, tap=node.tap,
                 memory_mb=MEMORY_MB, emulation_kernel=True,
                 detached=qemu.Detached(serial=node.serial, qmp=node.qmp, pidfile=node.pidfile))
    vm.prepare()
    node.argv_file.write_text(json.dumps(vm.argv))
    node.image_file.write_text(str(image.resolve()))


def new_card(lab: Lab, node: LabNode) -> None:
    """The node's card replaced by a freshly flashed one: its overlay (everything the node wrote) thrown away and
    made again from the same image. The node must be powered off."""
    if vm_pid(node) is not None:
        raise PibuildError(f"{node.name}: power it off before replacing its card")
    image = Path(node.image_file.read_text())
    for overlay in node.dir.glob("*.qcow2"):
        overlay.unlink()
    prepare_vm(lab, node, image)


def start_vm(lab: Lab, node: LabNode) -> None:
    argv = json.loads(node.argv_file.read_text())
    node.serial.unlink(missing_ok=True)
    node.qmp.unlink(missing_ok=True)
    tools.run(netns.exec_argv(lab.ns, argv), capture=True)


def vm_pid(node: LabNode) -> int | None:
    """The QEMU pid from the pidfile, only while that process is still QEMU."""
    try:
        pid = int(node.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"qemu-system" in cmdline else None


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(tools.pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def power_off(node: LabNode) -> None:
    """Pull the power: SIGKILL, no shutdown."""
    pid = vm_pid(node)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while tools.pid_alive(pid):
            time.sleep(0.05)


def log_size(node: LabNode) -> int:
    """Where the serial log ends now: a boot after this counts only what the log gains."""
    return node.log.stat().st_size if node.log.exists() else 0


def boot(lab: Lab, node: LabNode) -> None:
    """Power a stopped node on and wait for its login prompt."""
    mark = log_size(node)
    start_vm(lab, node)
    wait_login_prompt(node, mark, BOOT_TIMEOUT)


def wait_login_prompt(node: LabNode, offset: int, timeout: float) -> None:
    """Until the serial log shows a login prompt after byte `offset` (a node booting again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(node.log, "rb") as f:
            f.seek(offset)
            if b"login: " in f.read():
                return
        if vm_pid(node) is None:
            raise PibuildError(f"{node.name}: QEMU exited during boot; see {node.log}")
        time.sleep(1)
    raise PibuildError(f"{node.name}: no login prompt within {timeout:.0f} s; see {node.log}")


# ---- the console ---------------------------------------------------------------------------------------------

class NodeConsole(qemu.Console):
    """A root shell on a lab node's serial console, through its unix socket (reattachable from any process)."""

    def __init__(self, node: LabNode, timeout: float = LOGIN_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(node.serial))
        child = pexpect.fdpexpect.fdspawn(self.sock.fileno(), encoding="utf-8", codec_errors="replace",
                                          timeout=60, maxread=65536)
        super().__init__(child)
        self.name = node.name
        self.child.send("\n")
        self.login(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def ok(self, command: str, timeout: float = 120.0) -> str:
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise PibuildError(f"{self.name}: `{command}` exited {rc}: {out.strip()[-500:]}")
        return out


@contextlib.contextmanager
def consoles(lab: Lab, names: list[str] | None = None):
    opened: dict[str, NodeConsole] = {}
    try:
        for node in lab.nodes:
            if names is None or node.name in names:
                opened[node.name] = NodeConsole(node)
        yield opened
    finally:
        for c in opened.values():
            c.close()
