"""The cluster's Pacemaker configuration, made at build time by the image's own pcs.

firstboot used to run every `pcs -f` command of the plan on the Pi: pcs is Python, and each call costs seconds on a
Pi and about 11 s in an emulated lab node. The same commands run here instead, once per configuration, inside the
image (qemu-user) on an empty CIB. The result ships as /etc/pibuild/cib-configuration.xml and firstboot merges it
into the live CIB with one `cibadmin --replace`. The plan keeps the commands: they are what made the file, and
firstboot falls back to them where no file was built (a pi-gen export).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from builder import cache, chroot, mounts, tools
from builder.errors import PibuildError

PATH_IN_IMAGE = "etc/pibuild/cib-configuration.xml"
# Bump when build() changes what it makes from the same commands.
FORMAT = 1
CACHE_KIND = "cib"
SCRATCH = "/tmp/pibuild-cib.xml"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
       "PYTHONDONTWRITEBYTECODE": "1"}
SCHEMAS = "usr/share/pacemaker"


@contextlib.contextmanager
def _scratch(root: Path) -> Iterator[None]:
    """A tmpfs /tmp, and Pacemaker's schemas copied onto a tmpfs.

    Pacemaker finds its schemas by listing their directory, and a 32-bit ARM program under qemu-user cannot list
    a directory of the host's ext4 (its 64-bit directory offsets overflow): cibadmin then makes a CIB that
    validates against "unknown" and pcs cannot read it back. A tmpfs has small offsets.
    """
    with tempfile.TemporaryDirectory(prefix="pibuild-schemas-") as saved, contextlib.ExitStack() as undo:
        shutil.copytree(root / SCHEMAS, saved, dirs_exist_ok=True, symlinks=True)
        for target in (root / "tmp", root / SCHEMAS):
            tools.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(target)], capture=True)
            undo.callback(mounts.unmount_all_under, target)
        (root / "tmp").chmod(0o1777)
        shutil.copytree(saved, root / SCHEMAS, dirs_exist_ok=True, symlinks=True)
        yield


def _inside(root: Path, env: dict[str, str], *argv: str) -> str:
    proc = tools.run(["chroot", str(root), *argv], capture=True, check=False, env=env)
    if proc.returncode != 0:
        err = (proc.stderr + proc.stdout).decode(errors="replace").strip()
        raise PibuildError(f"building the cluster's CIB in the image: `{' '.join(argv)}` failed "
                           f"(exit {proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace")


def build(root: Path, arch: str, commands: list[list[str]]) -> bytes:
    """Run the plan's `pcs -f` commands with the image's pcs on an empty CIB; crm_verify must accept the result."""
    scratch = root / SCRATCH.lstrip("/")
    with chroot.chroot(root, arch) as ch, _scratch(root):
        env = {**ENV, **ch.qemu_env}
        scratch.write_text(_inside(root, env, "cibadmin", "--empty"))
        for command in commands:
            _inside(root, env, "pcs", "-f", SCRATCH, *command)
        _inside(root, env, "crm_verify", "--xml-file", SCRATCH)
        return scratch.read_bytes()


def configuration(root: Path, arch: str, commands: list[list[str]], cluster_key: str) -> bytes:
    """build(), cached per cluster image and command list: every node of a cluster ships the same file."""
    key = cache.digest(FORMAT, cluster_key, commands)
    with cache.locked(CACHE_KIND, key):
        entry = cache.lookup(CACHE_KIND, key)
        if entry is None:
            xml = build(root, arch, commands)
            with cache.new_entry(CACHE_KIND, key, {"commands": len(commands)}) as tmp:
                (tmp / "cib.xml").write_bytes(xml)
            entry = cache.lookup(CACHE_KIND, key)
        return (entry / "cib.xml").read_bytes()
