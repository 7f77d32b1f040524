"""Shared test helpers: the repository, the CLI, and proof that nothing was left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_pibuild(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = False,
                timeout: float = 3600) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess: real exit codes, real stderr."""
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pibuild {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def loop_devices() -> set[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts, chroot)")


@pytest.fixture
def needs_image_tools(needs_root):
    for tool in ("mmdebstrap", "sfdisk", "mcopy", "mke2fs", "bmaptool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
