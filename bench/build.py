#!/usr/bin/env python3
"""Build timings of the bundled example: cold build, another node from the warm cache, a rebuild with nothing changed.

    sudo .venv/bin/python bench/build.py [--cold] [-c CONFIG]

--cold builds into a throwaway cache (the full mmdebstrap run, ~8 minutes); without it the first figure is whatever
the current cache gives. Prints one line per figure and the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {model}, {mem_gib:.0f} GiB, {platform.system()} {platform.release()}"


def pibuild(args: list[str], cwd: Path, env: dict) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"pibuild {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="start from an empty cache")
    parser.add_argument("-c", "--config", default=str(REPO / "examples/cluster.yaml"))
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pibuild-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if opts.cold:
        env["XDG_CACHE_HOME"] = str(work / "cache")
    shutil.copy(opts.config, work / "cluster.yaml")
    try:
        first = pibuild(["node", "dns-pm01", "-o", "out"], work, env)
        other = pibuild(["node", "dns-pm02", "-o", "out"], work, env)
        again = pibuild(["node", "dns-pm01", "-o", "out"], work, env)
        size = (work / "out").glob("*-dns-pm01.img").__next__().stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"{'cold build (dns-pm01)' if opts.cold else 'first build (dns-pm01, current cache)'}: {first:.1f} s")
    print(f"another node from the warm cache (dns-pm02): {other:.1f} s")
    print(f"rebuild with nothing changed (dns-pm01): {again:.2f} s")
    print(f"image size: {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
