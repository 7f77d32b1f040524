"""Host tools: find them, name the Debian package when one is missing, run them as argv lists."""

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder.errors import MissingTool, PibuildError

# tool -> the Debian package that provides it
DEBIAN_PACKAGE = {
    "mmdebstrap": "mmdebstrap",
    "qemu-arm-static": "qemu-user-static",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-system-arm": "qemu-system-arm",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mkfs.vfat": "dosfstools",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "sfdisk": "fdisk",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "lsblk": "util-linux",
    "blockdev": "util-linux",
    "bmaptool": "bmap-tools",
    "xz": "xz-utils",
    "openssl": "openssl",
    "named-checkconf": "bind9-utils",
    "ip": "iproute2",
    "dig": "bind9-dnsutils",
    "cpio": "cpio",
    "depmod": "kmod",
    "zstd": "zstd",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
}


def require(*tools: str) -> None:
    """Fail with the package to install for the first tool that is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise MissingTool(tool, DEBIAN_PACKAGE.get(tool, tool))


def run(argv: Sequence[str], *, input: bytes | str | None = None, capture: bool = False,
        check: bool = True, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run argv; on failure raise PibuildError with the command and its stderr tail."""
    if "/" not in str(argv[0]):
        require(str(argv[0]))
    text = isinstance(input, str)
    proc = subprocess.run(
        list(argv), input=input, text=text or None, env=env, cwd=cwd,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
    )
    if check and proc.returncode != 0:
        err = proc.stderr if capture else ""
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        tail = "\n".join((err or "").strip().splitlines()[-15:])
        raise PibuildError(f"{argv[0]} failed (exit {proc.returncode}): {' '.join(map(str, argv))}"
                           + (f"\n{tail}" if tail else ""))
    return proc


def run_interruptible(argv: Sequence[str], *, what: str, grace: float = 60.0,
                      env: Mapping[str, str] | None = None) -> None:
    """Run a long child (mmdebstrap) in the foreground; on Ctrl-C let it clean up its own mounts before we do ours.

    The terminal's SIGINT reaches the child too; a SIGTERM to pibuild alone is passed on to it.
    """
    if "/" not in str(argv[0]):
        require(str(argv[0]))
    proc = subprocess.Popen(list(argv), env=env)
    try:
        rc = proc.wait()
    except BaseException:
        stop_process(proc, signal.SIGINT, grace)
        raise
    if rc != 0:
        raise PibuildError(f"{what} failed (exit {rc}); its messages are above")


def stop_process(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """Ask a child to stop with sig, give it grace seconds to clean up, then kill it."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (one of another user's counts; a zombie child of ours does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def sha256_of(stream, chunk: int = 4 << 20) -> str:
    """The sha256 of everything a binary stream still yields, read in chunks."""
    digest = hashlib.sha256()
    while data := stream.read(chunk):
        digest.update(data)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_of(f)


def terminate_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every cleanup (finally, ExitStack) runs as for Ctrl-C."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
