"""The clients on the lab's LAN, inside the namespace: builder.probe querying every VIP (raw DNS), and two glibc
resolvers looking a name up through the VIPs (builder.lookups)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

from builder import lookups, netns, probe, tools
from builder.lab.state import Lab


def probe_argv(lab: Lab, *extra: str) -> list[str]:
    return netns.exec_argv(lab.ns, [sys.executable, "-m", "builder.probe", *extra,
                                    *[v.address for v in lab.cluster.vips]])


def vips_answering(lab: Lab) -> dict[str, bool]:
    """One second of queries from the client: does each VIP answer (its last query good)?"""
    out = tools.run(probe_argv(lab, "--duration", "1.0", "--interval", "0.2"), capture=True).stdout.decode()
    last: dict[str, bool] = {v.address: False for v in lab.cluster.vips}
    for s in probe.parse_lines(out.splitlines()):
        last[s.vip] = s.ok
    return last


@contextlib.contextmanager
def prober(lab: Lab):
    """The client's queries, every 100 ms to every VIP, into a JSON-lines file for the whole drill."""
    path = lab.dir / f"probe-{int(time.time())}.jsonl"
    with open(path, "w") as out:
        proc = subprocess.Popen(probe_argv(lab), stdout=out, stderr=subprocess.DEVNULL)
    lab.prober_pidfile.write_text(str(proc.pid))
    try:
        time.sleep(1.0)
        yield path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lab.prober_pidfile.unlink(missing_ok=True)


def prober_pid(lab: Lab) -> int | None:
    """A prober left running by a `lab drill` that was killed."""
    try:
        pid = int(lab.prober_pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if tools.pid_alive(pid) else None


# Two lookups a second per glibc client (four queries: A and AAAA): on emulated nodes of a loaded host, five a
# second on top of the raw probe's twenty queries made BIND miss named2's monitor, and the cluster stopped it.
GLIBC_INTERVAL_S = 0.5


@contextlib.contextmanager
def glibc_clients(lab: Lab, interval: float = GLIBC_INTERVAL_S):
    """Both glibc clients (glibc's defaults, the recommended options) looking names up for as long as the block
    runs; yields client name -> the JSON-lines file of its lookups. `lab down` ends them with the namespace's
    other processes."""
    procs, files = [], {}
    try:
        for name, text in lookups.client_configs(lab.cluster).items():
            conf = lab.dir / f"resolv.{name}"
            conf.write_text(text)
            files[name] = lab.dir / f"lookups-{name}-{int(time.time())}.jsonl"
            with open(files[name], "w") as out:
                procs.append(subprocess.Popen(
                    netns.exec_argv(lab.ns, [sys.executable, "-m", "builder.lookups", "--resolv-conf", str(conf),
                                             "--interval", str(interval)]),
                    stdout=out, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        yield files
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(lookups.DRAIN_S + 5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def glibc_figures(files: dict[str, Path], since: float, until: float | None) -> dict:
    return lookups.figures(files, since, until) if files else {}
