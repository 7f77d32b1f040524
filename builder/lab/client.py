"""The client on the lab's LAN: builder.probe run inside the namespace, querying every VIP."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

from builder import netns, probe, tools
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
