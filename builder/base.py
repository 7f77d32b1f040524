"""Bases: where a cluster's image starts from (base.source).

- debian: a root file system from Debian's archive (mmdebstrap under qemu-user), laid out by image.py like
  Raspberry Pi OS Lite.
- raspios: the official Raspberry Pi OS Lite image, downloaded once, verified, cached by checksum (download.py).
- file: a local .img or .img.xz.
"""

from __future__ import annotations

import fnmatch
import lzma
import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath

import jinja2

from builder import chroot, progress, resources, stages, tools
from builder.config import DEFAULT_MIRROR, Cluster
from builder.errors import PibuildError
from builder.releases import ARCHES, RELEASES

# Debian's raspi-firmware always writes to /boot/firmware, whatever Raspberry Pi OS of that release used.
DEBIAN_BOOT_MOUNT = "/boot/firmware"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Documentation is not needed on a DNS appliance, and man-db's trigger is slow under qemu-user.
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")


def debian_dir() -> Path:
    return resources.data_dir("bases") / "debian"


def debian_packages(cluster: Cluster) -> list[str]:
    """The debian base's packages and the stages' packages: one apt run installs them all."""
    release = RELEASES[cluster.base.release]
    names = (debian_dir() / "packages").read_text().split()
    names += [*release.network_packages, ARCHES[cluster.base.arch].kernel_package]
    return list(dict.fromkeys(names + stages.packages()))


def mirror_lines(cluster: Cluster) -> list[str]:
    base = cluster.base
    components = " ".join(RELEASES[base.release].components)
    lines = [f"deb {base.mirror} {base.release} {components}"]
    if base.updates:
        lines.append(f"deb {base.mirror} {base.release}-updates {components}")
        # The security archive lives apart from the mirror; a local mirror is trusted to carry it itself.
        if base.mirror == DEFAULT_MIRROR:
            lines.append(f"deb {DEFAULT_SECURITY_MIRROR} {base.release}-security {components}")
    return lines


def mmdebstrap(cluster: Cluster, dest: Path) -> None:
    """Debian root file system with every package installed, the initramfs not yet generated."""
    tools.require("mmdebstrap")
    chroot.ensure_binfmt(cluster.base.arch)
    argv = ["mmdebstrap", "--mode=root", "--variant=apt", f"--arch={cluster.base.arch}",
            f"--components={','.join(RELEASES[cluster.base.release].components)}",
            "--dpkgopt=force-unsafe-io", "--aptopt=Acquire::Retries \"3\"",
            *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            f"--include={','.join(debian_packages(cluster))}",
            f"--hook-directory={debian_dir() / 'hooks'}",
            cluster.base.release, str(dest), *mirror_lines(cluster)]
    started = time.monotonic()
    tools.run_interruptible(argv, what="mmdebstrap", env={**os.environ, **chroot.user_env(cluster.base.arch)})
    progress.say(f"  mmdebstrap: {len(debian_packages(cluster))} packages in {time.monotonic() - started:.0f}s")


def lay_debian_files(root: Path, disk_id: str) -> None:
    """base/debian/files/ into the root file system, *.j2 rendered with the disk identifier."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    files = debian_dir() / "files"
    for source in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = source.relative_to(files).as_posix()
        target = root / (rel[:-3] if rel.endswith(".j2") else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".j2"):
            target.write_text(env.from_string(source.read_text()).render(disk_id=disk_id,
                                                                         boot_mount=DEBIAN_BOOT_MOUNT))
        else:
            shutil.copyfile(source, target)
        target.chmod(source.stat().st_mode & 0o777)


def initramfs_modules(root: Path) -> list[str]:
    """Module names matching bases/debian/initramfs-modules, for every kernel in the root file system."""
    patterns = [line.strip() for line in (debian_dir() / "initramfs-modules").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    names = set()
    # /lib/modules: bullseye's /lib is a directory of its own; merged /usr (bookworm on) makes it a link to usr/lib.
    module_dirs = [root / "usr/lib/modules"] + ([] if (root / "lib").is_symlink() else [root / "lib/modules"])
    for kernel_dir in (k for d in module_dirs for k in d.glob("*/kernel")):
        for ko in kernel_dir.rglob("*.ko*"):
            rel = PurePosixPath(ko.relative_to(kernel_dir).as_posix())
            if any(rel.match(p) or fnmatch.fnmatch(str(rel), p.replace("**", "*")) for p in patterns):
                names.add(re.sub(r"\.ko(\..*)?$", "", ko.name))
    return sorted(names)


def finish_debian(ch: chroot.Chroot) -> None:
    """Undo the initramfs deferral, generate it once; raspi-firmware's hook then writes the boot partition."""
    conf = ch.root / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/pibuild").write_text("# pibuild: only the modules hooks/pibuild-modules adds "
                                         "(see bases/debian/)\n"
                                         "MODULES=list\n"
                                         # The fsck hook cannot detect the root file system inside a chroot.
                                         "FSTYPE=ext4\n")
    # Carried, not force-loaded: hooks/pibuild-modules reads this list (../modules would load each at every boot).
    (conf / "pibuild-modules").write_text("# Written by pibuild from bases/debian/initramfs-modules\n"
                                          + "\n".join(initramfs_modules(ch.root)) + "\n")
    ch.run(["rm", "-f", "/usr/sbin/update-initramfs"])
    ch.run(["dpkg-divert", "--quiet", "--local", "--rename", "--remove", "/usr/sbin/update-initramfs"])
    ch.run(["systemctl", "enable", "pibuild-expand-rootfs.service"])
    ch.run(["update-initramfs", "-c", "-k", "all"], what="update-initramfs")
    # Left for Raspberry Pi OS parity: the image's hostname until the node's files replace it.
    (ch.root / "etc/hostname").write_text("raspberrypi\n")


def decompress(source: Path, dest: Path) -> None:
    """A local .img or .img.xz copied (sparsely) or decompressed to dest."""
    if source.suffix == ".xz":
        try:
            with lzma.open(source) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 4 << 20)
        except lzma.LZMAError as exc:
            raise PibuildError(f"base.path: {source} is not a valid .xz file ({exc})") from None
    else:
        tools.run(["cp", "--sparse=always", "--reflink=auto", str(source), str(dest)])
