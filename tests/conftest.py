"""Shared test helpers: the repository, the CLI, and proof that nothing was left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_config: pytest.Config | None = None


def run_pibuild(*args, cwd: Path | None = None, env: dict | None = None, check: bool = False,
                timeout: float = 3600) -> subprocess.CompletedProcess:
    """The real CLI of the code under test in a subprocess (real exit codes, real stderr), never a `pibuild` that
    PATH happens to find: a fresh machine has none outside .venv."""
    args = tuple(map(str, args))
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pibuild {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def pytest_configure(config):
    """Put a `pibuild` first on PATH that fails loudly, so a test that runs a bare `pibuild` fails on every machine,
    not only on a fresh one where none is installed (issue 22). Tests use run_pibuild."""
    global _config
    _config = config
    shim_dir = Path(tempfile.mkdtemp(prefix="pibuild-test-path-"))
    shim = shim_dir / "pibuild"
    shim.write_text("#!/bin/sh\n"
                    "echo 'tests must run the pibuild under test (conftest.run_pibuild), not one found on PATH' >&2\n"
                    "exit 127\n")
    shim.chmod(0o755)
    os.environ["PATH"] = f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    config._pibuild_path_shim = shim_dir


# A slow test's time and the suite's running total, on a line of its own as soon as it ends: CI stops a run at its
# time limit without the --durations summary, and these lines then tell where the time went.
SLOW_TEST_S = 30.0
_started = time.monotonic()
_spent: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _spent[report.nodeid] = _spent.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    spent = _spent.pop(nodeid, 0.0)
    if spent >= SLOW_TEST_S and _config is not None:
        reporter = _config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"    [{spent:.0f} s with its fixtures; suite at {time.monotonic() - _started:.0f} s]")


def pytest_unconfigure(config):
    shim_dir = getattr(config, "_pibuild_path_shim", None)
    if shim_dir is not None:
        shutil.rmtree(shim_dir, ignore_errors=True)


def _ours(path: str) -> bool:
    """A path the code under test may use: under its cache root or the temporary directory. A build elsewhere on
    the machine with a cache of its own (a developer's, beside a fresh-cache run) is not a leak of ours."""
    from builder import cache
    return any(path == str(root) or path.startswith(f"{root}/")
               for root in (cache.cache_root(), Path(tempfile.gettempdir()).resolve()))


def loop_devices() -> set[str]:
    """Attached loop devices backed by a file of ours, as "NAME BACK-FILE"."""
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                         capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.split()[1:] and _ours(line.split()[1])}


def mounts() -> set[str]:
    """Mount points of ours."""
    with open("/proc/self/mountinfo") as f:
        return {point for point in (line.split()[4] for line in f) if _ours(point)}


CONFIGS = REPO / "tests" / "configs"


def build_node(work: Path, config: Path, node: str) -> Path:
    """One node of a test cluster built with the real CLI in `work`; the image's path."""
    shutil.copy(config, work / "cluster.yaml")
    proc = run_pibuild("node", node, "-o", "out", cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (image,) = (work / "out").glob(f"*-{node}.img")
    return image


@pytest.fixture(scope="session")
def bullseye_image(tmp_path_factory) -> Path:
    """dns-pm01 of tests/configs/bullseye.yaml (armhf), built once per session for the image and the qemu tier:
    the release that differs most from the others (dhcpcd, pcs 0.10, Pacemaker 2.0, BIND 9.16, no merged /usr)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return build_node(tmp_path_factory.mktemp("bullseye"), CONFIGS / "bullseye.yaml", "dns-pm01")


@pytest.fixture(scope="session")
def arm64_cluster(tmp_path_factory) -> dict:
    """Both nodes of tests/configs/arm64.yaml (trixie, arm64, Pi 3B), built once per session with `pibuild all`, for
    the image tier and the qemu tier's board boot; with what the build printed and what was attached before it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    work = tmp_path_factory.mktemp("arm64")
    shutil.copy(CONFIGS / "arm64.yaml", work / "cluster.yaml")
    loops_before, mounts_before = loop_devices(), mounts()
    started = time.monotonic()
    proc = run_pibuild("all", "-o", "out", cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"dir": work, "out": work / "out", "stderr": proc.stderr, "seconds": time.monotonic() - started,
            "loops_before": loops_before, "mounts_before": mounts_before}


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts, chroot)")


@pytest.fixture
def needs_image_tools(needs_root):
    for tool in ("mmdebstrap", "sfdisk", "mcopy", "mke2fs", "bmaptool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
