"""Failover drills: break the node that holds a VIP, repair it, and measure what the client saw.

A drill is a Scenario: what breaks the target node (`event`) and what repairs it (`recover`). To add one, subclass
Scenario, give it a `name`, implement the two, and list an instance in SCENARIOS; `pibuild lab drill --scenario`
offers it from there. A drill whose course is not "break, fail over, repair, fail back" overrides `run()` and
builds its rows with `Drill.rows()`.

Each drill gives one row per VIP (the JSON of `lab drill --json`): scenario, vip, outage_s, recovered, failback_s,
node. Fields a drill measures itself come from its `measured()` (added to each of its rows); fields measured the
same way for every drill are added in `Drill.rows()`, the one place where a row is made.
"""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from builder import netns, probe, progress
from builder.errors import PibuildError, UsageError
from builder.lab.client import prober
from builder.lab.crm import ClusterState, cluster_state, healthy
from builder.lab.nodes import BOOT_TIMEOUT, NodeConsole, consoles, power_off, start_vm, wait_login_prompt
from builder.lab.settings import Settings, apply_settings, settings_of
from builder.lab.state import Lab, LabNode

SETTLE_S = 3.0          # every VIP answering this long: the failover (or the failback) is over
FAILOVER_TIMEOUT = 120
RECOVERY_TIMEOUT = 600  # a powered-off node boots again under TCG


@dataclass
class Drill:
    """The running lab during drills: a console on every node and the client's samples (builder.probe)."""

    lab: Lab
    cons: dict[str, NodeConsole]
    samples_file: Path

    def samples(self, since: float) -> list[probe.Sample]:
        with open(self.samples_file, errors="replace") as f:
            return [s for s in probe.parse_lines(f) if s.t >= since]

    def settled(self, since: float) -> bool:
        """Every VIP answered every query of the last SETTLE_S seconds (and there were such queries)."""
        now = time.time()
        recent = self.samples(max(since, now - SETTLE_S))
        for vip in self.lab.cluster.vips:
            mine = [s for s in recent if s.vip == vip.address]
            if len(mine) < SETTLE_S * 5 or not all(s.ok for s in mine):
                return False
        return now - since >= SETTLE_S

    def wait_settled(self, since: float, timeout: float, what: str) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.settled(since):
                return True
            time.sleep(0.5)
        progress.say(f"{what}: not every VIP answered within {timeout:.0f} s")
        return False

    def observer(self, target: str) -> NodeConsole:
        return next(c for name, c in self.cons.items() if name != target)

    def state(self, avoid: str | None = None) -> ClusterState | None:
        """What Pacemaker says, asked on a node other than `avoid` (None while no node answers)."""
        for name, con in self.cons.items():
            if name == avoid:
                continue
            try:
                return cluster_state(con)
            except (PibuildError, ET.ParseError):
                continue
        return None

    def wait_healthy(self, timeout: float, since: float, avoid: str | None = None) -> bool:
        """Every node online, every VIP home, every VIP answering."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state(avoid)
            if state and healthy(self.lab, state) and self.settled(since):
                return True
            time.sleep(2)
        return False

    def wait_online(self, node: str, timeout: float) -> bool:
        """Until `node` is back in the cluster, as another node sees it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state(avoid=node)
            if state and node in state.online:
                return True
            time.sleep(2)
        return False

    def make_healthy(self, timeout: float) -> bool:
        """A drill starts from a healthy, settled cluster: with manual failback a VIP left elsewhere is sent home
        first, and no transition may still be running (new settings, a cleanup) when the event comes."""
        if not self.wait_healthy(min(timeout, 30), time.time()):
            state = self.state()
            if state and set(state.online) == {n.name for n in self.lab.nodes}:
                self.failback()
            if not self.wait_healthy(timeout, time.time()):
                return False
        self.cons[self.lab.nodes[0].name].ok("crm_resource --wait", timeout=timeout)
        return True

    def target(self) -> str:
        """The node that holds the first VIP."""
        state = self.state()
        if state is None:
            raise PibuildError("no node's Pacemaker answers: `pibuild lab status`")
        vip = self.lab.cluster.vips[0]
        return state.where.get(vip.name, vip.prefer[:1])[0]

    def failback(self, via: str | None = None) -> None:
        """Per the configured policy: manual is the seed's `pcs resource cleanup`; auto waits for failure-timeout."""
        if self.lab.cluster.pacemaker.failback == "manual":
            self.cons[via or self.lab.nodes[0].name].ok("crm_resource --cleanup", timeout=180)

    def rows(self, scenario: str, target: str, event: float, recovery: float | None, ok: bool,
             measured: dict | None = None) -> list[dict]:
        """One row per VIP: the client's outage after `event` (and during the failback after `recovery`)."""
        samples = self.samples(event)
        rows = []
        for vip in self.lab.cluster.vips:
            o = probe.outage(samples, vip.address, event, recovery)
            rows.append({"scenario": scenario, "vip": vip.address, "outage_s": o.outage_s,
                         "recovered": o.recovered and ok, "failback_s": o.failback_s, "node": target,
                         **(measured or {})})
        return rows


class Scenario:
    """One drill against the node that holds the first VIP (see the module's docstring)."""

    name: ClassVar[str]

    def event(self, d: Drill, node: LabNode) -> None:
        raise NotImplementedError

    def recover(self, d: Drill, node: LabNode) -> None:
        raise NotImplementedError

    def measured(self, d: Drill, node: LabNode) -> dict:
        """Fields of this drill's own, added to each of its rows."""
        return {}

    def run(self, d: Drill) -> list[dict]:
        target = d.target()
        node = d.lab.node(target)
        progress.say(f"{self.name}: on {target} (holds {d.lab.cluster.vips[0].address})")
        event = time.time()
        self.event(d, node)
        d.wait_settled(event, FAILOVER_TIMEOUT, f"{self.name}: failover")
        progress.say(f"{self.name}: failed over; recovering {target}")
        recovery = time.time()
        self.recover(d, node)
        # Failback (manual: the cleanup) once the node is back in the cluster, asked on a node that stayed up.
        ok = d.wait_online(target, RECOVERY_TIMEOUT)
        d.failback(via=d.observer(target).name)
        ok = d.wait_healthy(RECOVERY_TIMEOUT, time.time(), avoid=target) and ok
        progress.say(f"{self.name}: {'healthy again' if ok else 'NOT healthy again'} "
                     f"({time.time() - recovery:.0f} s after the recovery began)")
        return d.rows(self.name, target, event, recovery, ok, self.measured(d, node))


class NamedStop(Scenario):
    name = "named-stop"

    def event(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("systemctl stop named")

    def recover(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("systemctl start named")


class NamedFreeze(Scenario):
    name = "named-freeze"

    def event(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("pkill -STOP -x named")

    def recover(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("pkill -CONT -x named")


class NodePoweroff(Scenario):
    name = "node-poweroff"

    def event(self, d: Drill, node: LabNode) -> None:
        d.cons.pop(node.name).close()
        power_off(node)

    def recover(self, d: Drill, node: LabNode) -> None:
        mark = node.log.stat().st_size if node.log.exists() else 0
        start_vm(d.lab, node)
        wait_login_prompt(node, mark, BOOT_TIMEOUT)
        d.cons[node.name] = NodeConsole(node)


class LinkDown(Scenario):
    name = "link-down"

    def event(self, d: Drill, node: LabNode) -> None:
        netns.set_link(d.lab.ns, node.tap, up=False)

    def recover(self, d: Drill, node: LabNode) -> None:
        netns.set_link(d.lab.ns, node.tap, up=True)


# Every drill, in the order `lab drill` runs them by default.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (NamedStop(), NamedFreeze(), NodePoweroff(), LinkDown())}


def drill(lab: Lab, scenarios: list[str], settings: list[Settings]) -> list[dict]:
    """Each scenario under each settings, from a healthy cluster; the rows of all, each with its settings' name."""
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    rows: list[dict] = []
    with consoles(lab) as cons, prober(lab) as samples:
        d = Drill(lab, cons, samples)
        try:
            for s in settings:
                apply_settings(lab, d.cons, s)
                for name in scenarios:
                    if not d.make_healthy(RECOVERY_TIMEOUT):
                        raise PibuildError(f"the cluster is not healthy before {name}: `pibuild lab status`")
                    for row in SCENARIOS[name].run(d):
                        rows.append({**row, "settings": s.name})
        finally:
            if len(settings) > 1 or settings[0].name == "seed":
                with contextlib.suppress(Exception):
                    apply_settings(lab, d.cons, settings_of(lab.cluster))
    return rows
