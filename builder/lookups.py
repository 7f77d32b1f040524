"""A real client: glibc's stub resolver (getaddrinfo) looking a name up again and again through a given resolv.conf.

Run inside a network namespace (`ip netns exec NS python3 -m builder.lookups --resolv-conf FILE`); the process
gives itself a private mount namespace in which FILE is /etc/resolv.conf and hosts are looked up in DNS only
(`hosts: dns`), so the lookup of a name that /etc/hosts also holds (localhost) goes to the nameservers. Every
`interval` a lookup starts in a thread of its own, whatever the ones before it are still waiting for (a stalled
lookup does not hide the next), as independent programs on a client would; glibc keeps its resolver state per
thread, so each lookup starts afresh, as each new process does. One JSON line per finished lookup:
{"t": start (epoch s), "s": how long it took, "ok": it returned an address, "error": glibc's message or null}.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_SLAVE = 0x1000, 0x4000, 0x80000
# A lookup slower than this is a stall a user notices.
SLOW_S = 1.0
# glibc's worst, three silent nameservers at its defaults (5 s, 2 rounds), with room: how long a stopping client
# waits for the lookups it started.
DRAIN_S = 35.0


def _mount(source: str, target: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def isolate(resolv_conf: Path) -> None:
    """This process's own /etc/resolv.conf and `hosts: dns`, in a mount namespace of its own (needs root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)} (run as root)")
    _mount("none", "/", MS_REC | MS_SLAVE)   # nothing mounted here reaches the host
    _mount(str(resolv_conf.resolve()), "/etc/resolv.conf", MS_BIND)
    with tempfile.NamedTemporaryFile("w", prefix="pibuild-nsswitch-", delete=False) as f:
        f.write("hosts: dns\n")
    _mount(f.name, "/etc/nsswitch.conf", MS_BIND)
    os.unlink(f.name)  # the bind mount keeps the file


class Client:
    def __init__(self, name: str, out) -> None:
        self.name, self.out = name, out
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def lookup(self) -> None:
        start, began = time.time(), time.monotonic()
        try:
            # AF_UNSPEC, as curl, apt and getent ahosts ask: glibc sends A and AAAA together.
            ok, error = bool(socket.getaddrinfo(self.name, None, type=socket.SOCK_STREAM)), None
        except (socket.gaierror, UnicodeError) as exc:
            ok, error = False, str(exc.args[-1] if exc.args else exc)
        line = json.dumps({"t": round(start, 3), "s": round(time.monotonic() - began, 3), "ok": ok, "error": error})
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def run(self, interval: float, duration: float | None, stop: threading.Event) -> None:
        begin = next_tick = time.monotonic()
        while not stop.is_set() and (duration is None or time.monotonic() - begin < duration):
            t = threading.Thread(target=self.lookup, daemon=True)
            t.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [t]
            next_tick += interval
            stop.wait(max(0.0, next_tick - time.monotonic()))
        deadline = time.monotonic() + DRAIN_S
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


# ---- what the lookups saw -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lookup:
    t: float
    s: float
    ok: bool
    error: str | None = None


def parse_lines(lines) -> list[Lookup]:
    out = []
    for line in lines:
        try:
            d = json.loads(line)
            out.append(Lookup(float(d["t"]), float(d["s"]), bool(d["ok"]), d.get("error")))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut off when the client was killed
    return sorted(out, key=lambda x: x.t)


@dataclass(frozen=True)
class Summary:
    lookups: int
    worst_s: float            # the longest lookup, answered or not
    slow: int                 # lookups that took more than SLOW_S
    failed: int               # lookups that returned no address
    worst_at: float | None    # when the longest one started (epoch s)

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}lookups": self.lookups, f"{prefix}worst_s": self.worst_s,
                f"{prefix}over_1s": self.slow, f"{prefix}failed": self.failed}


def summarize(lookups: list[Lookup], since: float = 0.0, until: float | None = None) -> Summary:
    """The lookups that started in [since, until)."""
    mine = [x for x in lookups if x.t >= since and (until is None or x.t < until)]
    worst = max(mine, key=lambda x: x.s, default=None)
    return Summary(len(mine), round(worst.s, 2) if worst else 0.0, sum(x.s > SLOW_S for x in mine),
                   sum(not x.ok for x in mine), worst.t if worst else None)


# ---- the lab's clients: one with glibc's defaults, one with pibuild's recommended options ------------------------

def client_configs(cluster) -> dict[str, str]:
    """name -> resolv.conf: the VIPs, with glibc's defaults and with `pibuild clients`'s recommended options."""
    from builder import clients
    return {"defaults": clients.resolv_conf(cluster, None), "recommended": clients.resolv_conf(cluster)}


def figures(files: dict[str, Path], since: float, until: float | None) -> dict:
    """The clients' figures for lookups that started in [since, until), as `lab drill --json` carries them:
    glibc_<client>_worst_s, _over_1s, _failed, _lookups."""
    out = {}
    for name, path in files.items():
        with open(path, errors="replace") as f:
            out.update(summarize(parse_lines(f), since, until).as_dict(f"glibc_{name}_"))
    return out


def client_table(rows: list[dict]) -> str:
    """What the lab's glibc clients felt during each failover (`lab drill` rows): worst lookup, lookups over 1 s,
    failed lookups, per scenario and settings."""
    lines = [f"{'glibc client':<15}{'settings':<10}{'defaults: worst':>17}{'>1 s':>6}{'failed':>8}"
             f"{'recommended: worst':>20}{'>1 s':>6}{'failed':>8}"]
    for r in {(r["scenario"], r["settings"]): r for r in rows}.values():
        if "glibc_defaults_worst_s" not in r:
            continue
        cells = "".join(f"{r[f'glibc_{c}_worst_s']:>{w}.2f} s{r[f'glibc_{c}_over_1s']:>6}{r[f'glibc_{c}_failed']:>8}"
                        for c, w in (("defaults", 15), ("recommended", 18)))
        lines.append(f"{r['scenario']:<15}{r['settings']:<10}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m builder.lookups", description=__doc__.splitlines()[0])
    p.add_argument("--resolv-conf", type=Path, required=True, help="the client's /etc/resolv.conf")
    p.add_argument("--name", default="localhost.", help="the name to look up (default: one BIND answers itself)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between the starts of two lookups")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until SIGTERM)")
    args = p.parse_args(argv)
    isolate(args.resolv_conf)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        Client(args.name, sys.stdout).run(args.interval, args.duration, stop)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
