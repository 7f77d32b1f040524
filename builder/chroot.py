"""A qemu-user chroot into an ARM root file system in which no service starts.

binfmt_misc is registered from qemu-user-static's own binfmt.d entries when missing (the machines start without it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from builder import mounts, tools
from builder.errors import MissingTool, PibuildError
from builder.releases import ARCHES

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d")
POLICY_RC_D = "usr/sbin/policy-rc.d"
ALWAYS_DENY = b"#!/bin/sh\n# pibuild: no service starts inside the build chroot\nexit 101\n"


def ensure_binfmt(arch: str) -> None:
    """Make the kernel run ARM binaries through qemu-user-static."""
    name = ARCHES[arch].qemu_user_binfmt
    if os.uname().machine in ("aarch64", "armv7l") and arch in ("arm64", "armhf"):
        return
    if not BINFMT_DIR.joinpath("register").exists():
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise PibuildError(f"cannot mount binfmt_misc ({proc.stderr.strip()}): "
                               f"run `mount -t binfmt_misc binfmt_misc {BINFMT_DIR}` as root")
    if BINFMT_DIR.joinpath(name).exists():
        return
    conf = BINFMT_CONF / f"{name}.conf"
    if not conf.exists():
        raise MissingTool(f"{name}-static", "qemu-user-static")
    rule = next(line for line in conf.read_text().splitlines() if line.startswith(":"))
    try:
        BINFMT_DIR.joinpath("register").write_text(rule)
    except OSError as exc:
        if not BINFMT_DIR.joinpath(name).exists():
            raise PibuildError(f"cannot register {name} with binfmt_misc: {exc.strerror}") from None


def user_env(arch: str) -> dict[str, str]:
    """Environment for a process that runs the image's programs under qemu-user (releases.Arch.qemu_user_cpu);
    inherited by everything it starts (mmdebstrap's dpkg, maintainer scripts)."""
    cpu = ARCHES[arch].qemu_user_cpu
    return {"QEMU_CPU": cpu} if cpu else {}


@contextlib.contextmanager
def chroot(root: Path, arch: str) -> Iterator[Chroot]:
    """Bind the kernel file systems into root, forbid service starts; undo all of it on the way out."""
    ensure_binfmt(arch)
    policy = root / POLICY_RC_D
    saved_policy = policy.read_bytes() if policy.exists() else None
    resolv = root / "etc/resolv.conf"
    saved_resolv = None
    if resolv.is_symlink() or resolv.exists():
        saved_resolv = root / "etc/resolv.conf.pibuild-saved"
        os.replace(resolv, saved_resolv)
    try:
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_bytes(ALWAYS_DENY)
        policy.chmod(0o755)
        shutil.copyfile("/etc/resolv.conf", resolv)  # apt inside needs the build host's resolver
        for fs, target, opts in (("proc", "proc", ()), ("sysfs", "sys", ()),
                                 ("/dev", "dev", ("bind",)), ("/dev/pts", "dev/pts", ("bind",))):
            (root / target).mkdir(parents=True, exist_ok=True)
            argv = ["mount", "-o", ",".join(opts)] if opts else ["mount", "-t", fs]
            tools.run([*argv, fs, str(root / target)], capture=True)
        yield Chroot(root, user_env(arch))
    finally:
        mounts.unmount_all_under(root / "proc")
        mounts.unmount_all_under(root / "sys")
        mounts.unmount_all_under(root / "dev")
        if saved_policy is None:
            policy.unlink(missing_ok=True)
        else:
            policy.write_bytes(saved_policy)
        resolv.unlink(missing_ok=True)
        if saved_resolv is not None:
            os.replace(saved_resolv, resolv)


class Chroot:
    def __init__(self, root: Path, qemu_env: Mapping[str, str] | None = None):
        self.root = root
        self.qemu_env = dict(qemu_env or {})

    def run(self, argv: list[str], *, env: Mapping[str, str] | None = None, input: bytes | None = None,
            what: str = "") -> None:
        full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8", "HOME": "/root", **self.qemu_env,
                    **(env or {})}
        proc = subprocess.run(["chroot", str(self.root), *argv], env=full_env, input=input)
        if proc.returncode != 0:
            raise PibuildError(f"{what or ' '.join(argv)} failed inside the image (exit {proc.returncode})")

    def apt_install(self, packages: list[str]) -> None:
        if packages:
            self.run(["apt-get", "update"], what="apt-get update")
            self.run(["apt-get", "install", "--yes", "--no-install-recommends", *packages],
                     what=f"apt-get install {' '.join(packages)}")
