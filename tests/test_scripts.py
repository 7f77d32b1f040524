"""The README's two commands as a user starts them: root runs them as they are (no sudo needed), another user gets
them re-run through sudo, or a clear message when there is no sudo."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["setup.sh", "example.sh", "test.sh"]
NOBODY = 65534


def test_scripts_pass_shellcheck():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (scripts/setup.sh installs it)")
    proc = subprocess.run(["shellcheck", "-x", *(f"scripts/{s}" for s in SCRIPTS), "scripts/as-root.sh"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture
def scripts_copy():
    """The scripts in a directory another user can read (pytest's tmp_path is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="pibuild-scripts-"))
    try:
        os.chmod(top, 0o755)
        shutil.copytree(REPO / "scripts", top / "scripts")
        yield top
    finally:
        shutil.rmtree(top)


def as_nobody(argv, cwd: Path, path: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a script as another user")
    setpriv = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*setpriv, *argv], cwd=cwd,
                          env={"PATH": path, "XDG_CACHE_HOME": "/var/cache/x", "CI": "true"}, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_another_user_without_sudo_is_told_to_run_as_root(scripts_copy, tmp_path, script):
    bin_dir = scripts_copy / "bin"  # bash and the few tools the scripts need before the root check, and no sudo
    bin_dir.mkdir()
    for tool in ("bash", "id", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = as_nobody([f"scripts/{script}"], scripts_copy, str(bin_dir))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"scripts/{script}: run this as root (apt-get, loop devices, chroot); "
                                   "sudo is not installed to do it for you")


@pytest.mark.parametrize("script", SCRIPTS)
def test_another_user_with_sudo_reruns_through_it(scripts_copy, script):
    # Real sudo would run the script as root here and install packages: a recorder in its place shows what it got.
    bin_dir = scripts_copy / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    sudo = bin_dir / "sudo"
    sudo.write_text('#!/bin/bash\nfor a in "$@"; do printf "%s\\n" "$a"; done\nexit 7\n')
    sudo.chmod(0o755)
    proc = as_nobody([f"scripts/{script}", "-m", "not lab"], scripts_copy, str(bin_dir))
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.splitlines() == ["--preserve-env=XDG_CACHE_HOME,CI", f"scripts/{script}", "-m", "not lab"]
