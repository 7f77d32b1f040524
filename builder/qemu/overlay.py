"""The throw-away qcow2 overlay a VM boots, and its root file system mounted on the host to write the console login.

The image is never written: a backing file is only ever opened read-only, and every write (the guest's, and the
autologin drop-in written before the boot) lands in the overlay.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from builder import mounts, tools
from builder.errors import MissingTool, PibuildError
from builder.layout import Layout
from builder.qemu.inspection import inside

AUTOLOGIN_DROPIN = "pibuild-autologin.conf"


def enable_root_autologin(root: Path, console: str) -> Path:
    """A drop-in for the serial getty on `console` that logs root in without a password (written to the overlay).

    agetty's own ExecStart is replaced: with `-o` login options (Debian's unit has `-o '-p -- \\u'`) agetty would
    not pass `-f` to login, and login would still ask for a password.
    """
    agetty = "/sbin/agetty"
    for rel in ("/usr/lib/systemd/system/serial-getty@.service", "/lib/systemd/system/serial-getty@.service"):
        unit = inside(root, rel)
        if unit.is_file():
            for line in unit.read_text().splitlines():
                if line.startswith("ExecStart="):
                    agetty = shlex.split(line.split("=", 1)[1].lstrip("-@+!:"))[0]
                    break
            break
    dropin_dir = inside(root, f"/etc/systemd/system/serial-getty@{console}.service.d")
    dropin_dir.mkdir(parents=True, exist_ok=True)
    dropin = dropin_dir / AUTOLOGIN_DROPIN
    dropin.write_text("# Written by pibuild into a throw-away QEMU overlay (smoke test, lab), never into an image.\n"
                      "[Service]\nExecStart=\n"
                      f"ExecStart=-{agetty} --autologin root --noclear --keep-baud 115200,57600,38400,9600 "
                      "%I $TERM\n")
    dropin.chmod(0o644)
    return dropin


# The kernel drivers that take QEMU's usb-net device (a Linux USB gadget: CDC subset, CDC Ethernet, RNDIS).
USB_NET_DRIVERS = ("cdc_subset", "cdc_ether", "rndis_host")


def name_board_nic(root: Path, interface: str) -> Path:
    """A systemd .link for the QEMU board's usb-net NIC (written to the overlay): the name the node's network
    configuration expects. A Pi's own LAN chip (smsc95xx, lan78xx) is eth0 with net.ifnames=0; cdc_subset, which
    takes the usb-net device, names it usb0, and with a random MAC of its own (not QEMU's mac=), so the link is
    matched by driver: the board has no other NIC."""
    link = inside(root, "/etc/systemd/network") / "10-pibuild-board-nic.link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text("# Written by pibuild into a throw-away QEMU overlay (smoke --board), never into an image.\n"
                    f"[Match]\nDriver={' '.join(USB_NET_DRIVERS)}\n\n[Link]\nName={interface}\n")
    link.chmod(0o644)
    return link


def create_overlay(image: Path, overlay: Path, size: int | None = None) -> Path:
    """A qcow2 file backed by the image (read-only); size, when given, may exceed the image's."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.resolve()), str(overlay)]
    if size is not None:
        argv.append(str(size))
    tools.run(argv, capture=True)
    return overlay


def qemu_opt(value: Path | str) -> str:
    """A value inside a QEMU -option key=value list: commas doubled."""
    return str(value).replace(",", ",,")


@contextlib.contextmanager
def overlay_root(overlay: Path, layout: Layout, workdir: Path) -> Iterator[Path]:
    """The root file system of a qcow2 overlay, mounted read-write; every write lands in the overlay.

    qemu-storage-daemon exports the overlay as a raw file over FUSE; an offset loop device on that file mounts the
    ext4 (no partition scanning on these machines). Undone in reverse order, also on Ctrl-C.
    """
    if shutil.which("qemu-storage-daemon") is None:
        raise MissingTool("qemu-storage-daemon", "qemu-system-common")
    raw = workdir / "overlay-export.raw"
    raw.touch()
    errlog = workdir / "qemu-storage-daemon.log"
    argv = ["qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file0,filename={qemu_opt(overlay)}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "--export", f"type=fuse,id=export0,node-name=disk0,mountpoint={qemu_opt(raw)},writable=on"]
    with open(errlog, "wb") as err:
        # Its own session: a Ctrl-C must not stop it before the loop device on its export is released.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not mounts.mounts_under(raw):
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = errlog.read_text(errors="replace").strip()
                raise PibuildError(f"qemu-storage-daemon could not export {overlay} over FUSE"
                                   + (f": {detail}" if detail else "") + " (is /dev/fuse there?)")
            time.sleep(0.05)
        with mounts.partition_mounted(raw, layout.root_offset, layout.root_size, workdir / "overlay-root") as root:
            yield root
    finally:
        tools.stop_process(proc, signal.SIGTERM, grace=20)
        if mounts.mounts_under(raw):
            subprocess.run(["umount", "--lazy", str(raw)], stderr=subprocess.DEVNULL)
        raw.unlink(missing_ok=True)
        errlog.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (workdir / "overlay-root").rmdir()
