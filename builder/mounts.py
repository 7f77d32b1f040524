"""Loop devices and mounts that are always released, also on Ctrl-C or a failure in the middle.

Every attach or mount is pushed onto an ExitStack by the caller; `unmount_all_under()` is the last line of defence
before a directory is deleted, so a bind-mounted /dev is never removed with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from builder import tools
from builder.errors import PibuildError


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first (from /proc/self/mountinfo)."""
    root = os.path.realpath(path)
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root.rstrip("/") + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all_under(path: Path) -> None:
    for point in mounts_under(path):
        if subprocess.run(["umount", point], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "--lazy", point], stderr=subprocess.DEVNULL)
    left = mounts_under(path)
    if left:
        raise PibuildError(f"could not unmount {', '.join(left)}; unmount them by hand before deleting {path}")


def remove_tree(path: Path) -> None:
    """rm -rf, but never through a mount point."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_all_under(path)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@contextlib.contextmanager
def loop_device(image: Path, offset: int, size: int, read_only: bool = False) -> Iterator[str]:
    """Attach one partition of an image as a loop device (no partition scanning on these machines)."""
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    if read_only:
        argv.append("--read-only")
    dev = tools.run([*argv, str(image)], capture=True).stdout.decode().strip()
    try:
        yield dev
    finally:
        for _ in range(10):
            if subprocess.run(["losetup", "--detach", dev], stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.3)


@contextlib.contextmanager
def mounted(device: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    argv = ["mount"]
    if options:
        argv += ["-o", ",".join(options)]
    tools.run([*argv, device, str(mountpoint)], capture=True)
    try:
        yield mountpoint
    finally:
        unmount_all_under(mountpoint)


@contextlib.contextmanager
def partition_mounted(image: Path, offset: int, size: int, mountpoint: Path, read_only: bool = False) -> Iterator[Path]:
    """Mount an ext4 partition of an image through an offset loop device."""
    with contextlib.ExitStack() as stack:
        dev = stack.enter_context(loop_device(image, offset, size, read_only))
        yield stack.enter_context(mounted(dev, mountpoint, *(("ro",) if read_only else ())))
