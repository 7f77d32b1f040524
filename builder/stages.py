"""Run stages/ (pi-gen's stage format) against a root file system.

A stage is a directory of sub-stages run in name order; in each: NN-packages, NN-run.sh (on the host, with
ROOTFS_DIR), NN-run-chroot.sh (inside the image), in NN order, as pi-gen does.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder import progress, resources
from builder.chroot import Chroot
from builder.config import Cluster
from builder.errors import PibuildError

STEP_RE = re.compile(r"^(\d\d)-(packages|run\.sh|run-chroot\.sh)$")


@dataclass(frozen=True)
class Step:
    substage: Path
    kind: str  # "packages" | "run.sh" | "run-chroot.sh"
    path: Path

    def __str__(self) -> str:
        return f"{self.substage.name}/{self.path.name}"


def substages(stage_dir: Path | None = None) -> list[Path]:
    stage_dir = stage_dir or resources.stages_dir()
    return sorted(p for p in stage_dir.iterdir() if p.is_dir() and re.match(r"^\d\d-", p.name))


def steps(stage_dir: Path | None = None) -> list[Step]:
    out = []
    for sub in substages(stage_dir):
        found = sorted((m.group(1), ("packages", "run.sh", "run-chroot.sh").index(m.group(2)), p, m.group(2))
                       for p in sub.iterdir() if (m := STEP_RE.match(p.name)))
        out += [Step(sub, kind, path) for _, _, path, kind in found]
    return out


def packages(stage_dir: Path | None = None) -> list[str]:
    """Every package the stages install, in order, without duplicates."""
    seen: dict[str, None] = {}
    for step in steps(stage_dir):
        if step.kind == "packages":
            for name in step.path.read_text().split():
                if not name.startswith("#"):
                    seen.setdefault(name)
    return list(seen)


def environment(cluster: Cluster) -> dict[str, str]:
    """pi-gen's variables, from the config: the cluster-wide part only (nothing per node)."""
    return {
        "FIRST_USER_NAME": cluster.login.user,
        "PUBKEY_SSH_FIRST_USER": "\n".join(cluster.login.ssh_authorized_keys),
        "FIRST_USER_PASS_HASH": cluster.login.password_hash or "",
        "ENABLE_SSH": "1",
        "RELEASE": cluster.base.release,
        "ARCH": cluster.base.arch,
    }


def run_stages(ch: Chroot, cluster: Cluster, *, packages_installed: bool) -> None:
    """Run every step; packages_installed: the base already installed NN-packages (one apt run for the debian base)."""
    env = environment(cluster)
    for step in steps():
        progress.say(f"  stage {step}")
        if step.kind == "packages":
            if not packages_installed:
                ch.apt_install(step.path.read_text().split())
        elif step.kind == "run.sh":
            proc = subprocess.run(["bash", "-e", str(step.path)], cwd=step.substage,
                                  env={**os.environ, **ch.qemu_env, **env, "ROOTFS_DIR": str(ch.root)})
            if proc.returncode != 0:
                raise PibuildError(f"stage step {step} failed (exit {proc.returncode})")
        else:
            ch.run(["/bin/bash", "-e", "-s"], env=env, input=step.path.read_bytes(), what=f"stage step {step}")
