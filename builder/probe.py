"""The lab's client: real DNS queries to every VIP every 100 ms, and the outage they saw.

Run inside the lab's namespace (`ip netns exec NS python3 -m builder.probe VIP...`); it prints one JSON line per
query: {"t": send time (epoch s), "vip": address, "ok": answered, "ms": round trip or null}. A query is good when
the answer carries its id, NOERROR and at least one record, within the timeout; a timeout, an ICMP refusal or an
unreachable host is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass


def query(qid: int, name: str) -> bytes:
    """A recursive query for NAME, type A, class IN."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split(".") if part)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def answer_id(data: bytes) -> tuple[int, bool] | None:
    """(id, good) of a response: good when it is a response with NOERROR and at least one answer record."""
    if len(data) < 12:
        return None
    qid, flags, _qd, ancount = struct.unpack("!HHHH", data[:8])
    is_response, rcode = flags & 0x8000, flags & 0x000F
    return qid, bool(is_response) and rcode == 0 and ancount > 0


class Prober:
    def __init__(self, vips: list[str], name: str, timeout: float, out) -> None:
        self.name, self.timeout, self.out = name, timeout, out
        self.sel = selectors.DefaultSelector()
        self.socks: dict[str, socket.socket] = {}
        self.pending: dict[str, dict[int, float]] = {v: {} for v in vips}
        for vip in vips:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect((vip, 53))
            self.socks[vip] = s
            self.sel.register(s, selectors.EVENT_READ, vip)

    def emit(self, vip: str, sent: float, ok: bool, now: float) -> None:
        ms = round((now - sent) * 1000, 1) if ok else None
        self.out.write(json.dumps({"t": round(sent, 3), "vip": vip, "ok": ok, "ms": ms}) + "\n")
        self.out.flush()

    def fail_oldest(self, vip: str, now: float) -> None:
        pending = self.pending[vip]
        if pending:
            qid = min(pending, key=pending.get)
            self.emit(vip, pending.pop(qid), False, now)

    def send(self, vip: str) -> None:
        qid = int.from_bytes(os.urandom(2), "big")
        now = time.time()
        try:
            self.socks[vip].send(query(qid, self.name))
            self.pending[vip][qid] = now
        except OSError:  # host unreachable, refused: reported on the socket by an earlier ICMP
            self.emit(vip, now, False, now)

    def receive(self, vip: str) -> None:
        now = time.time()
        try:
            data = self.socks[vip].recv(4096)
        except OSError:
            self.fail_oldest(vip, now)
            return
        parsed = answer_id(data)
        if parsed and parsed[0] in self.pending[vip]:
            self.emit(vip, self.pending[vip].pop(parsed[0]), parsed[1], now)

    def expire(self) -> None:
        now = time.time()
        for vip, pending in self.pending.items():
            for qid, sent in list(pending.items()):
                if now - sent >= self.timeout:
                    self.emit(vip, pending.pop(qid), False, now)

    def run(self, interval: float, duration: float | None) -> None:
        start = next_tick = time.monotonic()
        while duration is None or time.monotonic() - start < duration:
            now = time.monotonic()
            if now >= next_tick:
                for vip in self.socks:
                    self.send(vip)
                next_tick += interval
                if next_tick < now:  # we fell behind (a stalled machine): do not burst to catch up
                    next_tick = now + interval
            for key, _ in self.sel.select(timeout=max(0.0, min(next_tick - time.monotonic(), 0.02))):
                self.receive(key.data)
            self.expire()


# --- outage from the samples -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    t: float
    vip: str
    ok: bool


def parse_lines(lines) -> list[Sample]:
    samples = []
    for line in lines:
        try:
            d = json.loads(line)
            samples.append(Sample(float(d["t"]), str(d["vip"]), bool(d["ok"])))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut off when the prober was killed
    return sorted(samples, key=lambda s: s.t)


def windows(samples: list[Sample]) -> list[tuple[float, float | None]]:
    """The outages of one VIP: (first failed query, first good query after it); None when it never answered again."""
    out: list[tuple[float, float | None]] = []
    start = None
    for s in samples:
        if not s.ok and start is None:
            start = s.t
        elif s.ok and start is not None:
            out.append((start, s.t))
            start = None
    if start is not None:
        out.append((start, None))
    return out


@dataclass(frozen=True)
class Outage:
    vip: str
    outage_s: float       # the first outage after the event: first failed answer to the first good one
    recovered: bool       # the VIP answers at the end (after recovery and failback)
    failback_s: float     # failed time during recovery and failback


def outage(samples: list[Sample], vip: str, event: float, recovery: float | None = None) -> Outage:
    """The outage VIP saw after an event at time `event`; `recovery` is when recovery (and failback) began."""
    mine = [s for s in samples if s.vip == vip and s.t >= event]
    wins = windows(mine)
    end = mine[-1].t if mine else event
    recovered = bool(mine) and mine[-1].ok
    if not wins:
        return Outage(vip, 0.0, recovered, 0.0)
    first_start, first_end = wins[0]
    first = (first_end if first_end is not None else end) - first_start
    later = [w for w in wins[1:] if recovery is None or w[0] >= recovery]
    failback = sum((e if e is not None else end) - s for s, e in later)
    return Outage(vip, round(first, 2), recovered and first_end is not None, round(failback, 2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m builder.probe", description=__doc__.splitlines()[0])
    p.add_argument("vips", nargs="+")
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=0.25)
    p.add_argument("--name", default="localhost")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until killed)")
    args = p.parse_args(argv)
    try:
        Prober(args.vips, args.name, args.timeout, sys.stdout).run(args.interval, args.duration)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
