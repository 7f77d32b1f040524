"""Failover drills: break the node that holds a VIP, repair it, and measure what the client saw.

A drill is a Scenario: what breaks the target node (`event`) and what repairs it (`recover`). To add one, subclass
Scenario, give it a `name`, implement the two, and list an instance in SCENARIOS; `pibuild lab drill --scenario`
offers it from there. A drill whose course is not "break, fail over, repair, fail back" overrides `run()` and
builds its rows with `Drill.rows()` (node-replace: a new card; formation-powercut: new cards for all, a power cut
during formation). A drill that is not part of a bare `lab drill` sets `by_default = False`.

Each drill gives one row per VIP (the JSON of `lab drill --json`): scenario, vip, outage_s, recovered, failback_s,
node, and the glibc clients' figures from the event until recovery began (glibc_defaults_worst_s, _over_1s, _failed,
_lookups, the same for glibc_recommended_; per scenario, since a client uses every VIP). Fields a drill measures
itself come from its `measured()` (added to each of its rows); fields measured the same way for every drill are
added in `Drill.rows()`, the one place where a row is made.
"""

from __future__ import annotations

import contextlib
import random
import shlex
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from builder import netns, plan, probe, progress
from builder.errors import PibuildError, UsageError
from builder.lab.client import glibc_clients, glibc_figures, prober
from builder.lab.crm import ClusterState, cluster_state, healthy
from builder.lab.nodes import (
    BOOT_TIMEOUT,
    NodeConsole,
    boot,
    consoles,
    log_size,
    new_card,
    power_off,
    start_vm,
    wait_login_prompt,
)
from builder.lab.settings import Settings, apply_settings, settings_of
from builder.lab.state import Lab, LabNode

SETTLE_S = 3.0          # every VIP answering this long: the failover (or the failback) is over
FAILOVER_TIMEOUT = 120
RECOVERY_TIMEOUT = 600  # a powered-off node boots again under TCG
LATE_CLEANUPS = 3       # failures after a drill's failback that are cleaned up again (and reported)
LATE_FAILURE_GRACE_S = 20
FORMATION_TIMEOUT = 900  # new cards: firstboot forming the cluster (as `lab up` waits)


@dataclass
class Drill:
    """The running lab during drills: a console on every node, the raw client's samples (builder.probe) and the
    glibc clients' lookups (builder.lookups: client name -> file)."""

    lab: Lab
    cons: dict[str, NodeConsole]
    samples_file: Path
    glibc: dict[str, Path] = field(default_factory=dict)

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

    def wait_firstboot_done(self, node: str, timeout: float) -> bool:
        """Until `node`'s firstboot wrote its done mark (a new card rejoined or a cluster formed)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.cons[node].run(f"test -e {plan.DONE_PATH}", timeout=60)[0] == 0:
                return True
            time.sleep(3)
        progress.say(f"{node}: firstboot not done within {timeout:.0f} s (`journalctl -u pibuild-firstboot`)")
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

    def heal(self, timeout: float, avoid: str) -> tuple[bool, list[str]]:
        """Failback (asked on a node other than `avoid`), then wait until healthy. Under manual failback a failure
        that appears after the cleanup (a monitor of a starved emulated node missing its deadline) would keep its
        VIP away for good: it is cleaned up again, at most LATE_CLEANUPS times, and returned so that the drill's row
        shows it instead of hiding it."""
        via = self.observer(avoid).name
        self.failback(via=via)
        cleaned, late, cleanups = time.time(), [], 0
        deadline = cleaned + timeout
        while time.time() < deadline:
            state = self.state(avoid)
            if state and healthy(self.lab, state) and self.settled(cleaned):
                return True, late
            # The grace: crm_mon may still show what the cleanup is removing.
            if (state and state.failed and self.lab.cluster.pacemaker.failback == "manual"
                    and cleanups < LATE_CLEANUPS and time.time() - cleaned > LATE_FAILURE_GRACE_S):
                late.extend(state.failed)
                cleanups += 1
                progress.say(f"a failure after the cleanup: {', '.join(state.failed)}; cleaning up again")
                self.failback(via=via)
                cleaned = time.time()
            time.sleep(2)
        return False, late

    def rows(self, scenario: str, target: str, event: float, recovery: float | None, ok: bool,
             measured: dict | None = None) -> list[dict]:
        """One row per VIP: the client's outage after `event` (and during the failback after `recovery`)."""
        samples = self.samples(event)
        clients = glibc_figures(self.glibc, event, recovery)
        rows = []
        for vip in self.lab.cluster.vips:
            o = probe.outage(samples, vip.address, event, recovery)
            rows.append({"scenario": scenario, "vip": vip.address, "outage_s": o.outage_s,
                         "recovered": o.recovered and ok, "failback_s": o.failback_s, "node": target,
                         **clients, **(measured or {})})
        return rows


class Scenario:
    """One drill against the node that holds the first VIP (see the module's docstring)."""

    name: ClassVar[str]
    # False: only run when asked for by name (`lab drill --scenario`), not by a bare `lab drill`.
    by_default: ClassVar[bool] = True
    # True: the drill forms the cluster anew from new cards, so the drill's settings are applied again after it.
    reforms_cluster: ClassVar[bool] = False

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
        healthy_again, late = d.heal(RECOVERY_TIMEOUT, avoid=target)
        ok = ok and healthy_again
        progress.say(f"{self.name}: {'healthy again' if ok else 'NOT healthy again'} "
                     f"({time.time() - recovery:.0f} s after the recovery began)")
        return d.rows(self.name, target, event, recovery, ok,
                      {**self.measured(d, node), "failures_after_failback": late})


class NamedStop(Scenario):
    name = "named-stop"

    def event(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("systemctl stop named")

    def recover(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("systemctl start named")


class NamedFreeze(Scenario):
    name = "named-freeze"
    # named2 gives BIND up to its monitor timeout to answer for 30 s after an address moved (its interface rescan):
    # the freeze waits out that window after the last move here (the failback before it), so the drill measures a
    # hang as the steady state meets it.
    WAIT_FOR_RESCAN_WINDOW = ("m=/run/resource-agents/address-changed; while [ -e $m ] && "
                              "[ $(( $(date +%s) - $(stat -c %Y $m) )) -lt 30 ]; do sleep 1; done")

    def event(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok(f"{self.WAIT_FOR_RESCAN_WINDOW}; pkill -STOP -x named")

    def recover(self, d: Drill, node: LabNode) -> None:
        d.cons[node.name].ok("pkill -CONT -x named")


class NodePoweroff(Scenario):
    name = "node-poweroff"

    def event(self, d: Drill, node: LabNode) -> None:
        d.cons.pop(node.name).close()
        power_off(node)

    def recover(self, d: Drill, node: LabNode) -> None:
        boot(d.lab, node)
        d.cons[node.name] = NodeConsole(node)


class NodeReplace(Scenario):
    """A dead card replaced by the same image freshly flashed (issue 17): the node that holds the first VIP loses
    power, its overlay is thrown away, and it boots the image again. Its firstboot must rejoin it to the running
    cluster by itself. Measured from power-on: the boot (login prompt), online in the cluster as the survivor sees
    it, firstboot done on the new card (which then holds no plaintext secret again); whether and when its VIP came
    home without anyone's help; the glibc clients from power-on until the cluster is healthy (rejoin_glibc_*)."""

    name = "node-replace"
    # After the rejoin: how long to wait for the VIP to come home by itself. It comes once the new card's BIND runs
    # under Pacemaker, about when its firstboot is done: 50-70 s on a quiet host, 146 s on a slow one (fresh run,
    # 2026-12-01). A VIP kept away by a failure (manual failback) never comes, so a long wait still tells them apart.
    HOME_WAIT_S = 300

    def run(self, d: Drill) -> list[dict]:
        target = d.target()
        node = d.lab.node(target)
        vip = d.lab.cluster.vips[0]
        progress.say(f"{self.name}: {target} (holds {vip.address}) loses power; its card is replaced")
        event = time.time()
        d.cons.pop(target).close()
        power_off(node)
        d.wait_settled(event, FAILOVER_TIMEOUT, f"{self.name}: failover")
        new_card(d.lab, node)
        recovery = time.time()
        boot(d.lab, node)
        booted = time.time()
        progress.say(f"{self.name}: the new card booted to the login prompt in {booted - recovery:.0f} s")
        d.cons[target] = NodeConsole(node)
        ok = d.wait_online(target, RECOVERY_TIMEOUT)
        rejoined = time.time()
        progress.say(f"{self.name}: {target} {'online' if ok else 'NOT online'} in the cluster "
                     f"{rejoined - recovery:.0f} s after power-on")
        done = ok and d.wait_firstboot_done(target, RECOVERY_TIMEOUT)
        finished = time.time()
        home_s = self.wait_home(d, target, vip.name, rejoined) if ok else None
        left = d.cons[target].run(f"ls {plan.PASSWORD_PATH} {plan.SHIPPED_AUTHKEY} 2>/dev/null", timeout=60)[1]
        # Whatever the policy left elsewhere goes home for the next drill (manual: the cleanup).
        healthy_again, late = d.heal(RECOVERY_TIMEOUT, avoid=target)
        end = time.time()
        progress.say(f"{self.name}: {'healthy again' if healthy_again else 'NOT healthy again'} "
                     f"({end - recovery:.0f} s after power-on)")
        measured = {
            "boot_s": round(booted - recovery, 1),
            "rejoin_s": round(rejoined - recovery, 1) if ok else None,
            "firstboot_done_s": round(finished - recovery, 1) if done else None,
            "vip_home_after_rejoin_s": home_s,
            "secrets_left_on_card": sorted(left.split()),
            "failures_after_failback": late,
            **{f"rejoin_{k}": v for k, v in glibc_figures(d.glibc, recovery, end).items()},
        }
        return d.rows(self.name, target, event, recovery, ok and done and healthy_again, measured)

    def wait_home(self, d: Drill, target: str, vip: str, since: float) -> float | None:
        """Seconds from the rejoin until `vip` ran on `target` again by itself; None if it stayed away."""
        deadline = since + self.HOME_WAIT_S
        while time.time() < deadline:
            state = d.state(avoid=target)
            if state and state.where.get(vip) == (target,):
                return round(time.time() - since, 1)
            time.sleep(2)
        return None


class FormationPowercut(Scenario):
    """Formation survives a power cut (issue 17): every node gets a new card and boots; when the initiator's
    firstboot reaches `moment` (the line its journal prints as it begins that step) its power is cut, and it boots
    again from the same card. The cluster must still form: every node's firstboot done, every VIP home and
    answering. `moment` None: a moment drawn at random from MOMENTS. Re-forms the whole cluster (about one
    `lab up`), so a bare `lab drill` does not run it."""

    by_default = False
    reforms_cluster = True
    # The initiator's steps, by the journal line that begins each (firstboot/pibuild-firstboot).
    MOMENTS: ClassVar[dict[str, str]] = {
        "setup": "running: pcs cluster setup",                      # making corosync.conf (pcs, ~20 s emulated)
        "start": "running: systemctl enable --now corosync",        # corosync and pacemaker starting
        "auth": "running: pcs host auth",                           # the tokens, pcsd to pcsd
        "push": "pushing the configuration",                        # the CIB replaced
        "mark": "running: cibadmin --modify",                       # admin_epoch
    }

    def __init__(self, moment: str | None = None):
        self.moment = moment
        self.name = "formation-powercut" + (f"-{moment}" if moment else "")

    def run(self, d: Drill) -> list[dict]:
        moment = self.moment or random.choice(list(self.MOMENTS))
        initiator = d.lab.nodes[0]
        progress.say(f"{self.name}: every node gets a new card; {initiator.name}'s power is cut at '{moment}'")
        event = time.time()
        for name in list(d.cons):
            d.cons.pop(name).close()
        marks = {}
        for node in d.lab.nodes:
            power_off(node)
            new_card(d.lab, node)
            marks[node.name] = log_size(node)
        start = time.time()
        for node in d.lab.nodes:
            start_vm(d.lab, node)
        for node in d.lab.nodes:
            wait_login_prompt(node, marks[node.name], BOOT_TIMEOUT)
            d.cons[node.name] = NodeConsole(node)
        reached = self.wait_journal(d.cons[initiator.name], self.MOMENTS[moment], FORMATION_TIMEOUT)
        cut = time.time()
        d.cons.pop(initiator.name).close()
        power_off(initiator)
        progress.say(f"{self.name}: {initiator.name} " + (f"reached '{moment}'; power cut {cut - start:.0f} s after "
                     "power-on" if reached else f"never reached '{moment}'; power cut anyway"))
        boot(d.lab, initiator)
        d.cons[initiator.name] = NodeConsole(initiator)
        formed = all(d.wait_firstboot_done(n.name, FORMATION_TIMEOUT) for n in d.lab.nodes)
        formed_at = time.time()
        # A monitor that missed on a node starved by the other's boot is no failure to form, but under manual
        # failback it keeps a VIP away: healed as after every drill, and each such failure named in the row.
        state = d.state(avoid=initiator.name) if formed else None
        ok, late = d.heal(RECOVERY_TIMEOUT, avoid=initiator.name) if formed else (False, [])
        cleaned = [*(state.failed if state else ()), *late]
        progress.say(f"{self.name}: {'formed' if ok else 'NOT formed'} {formed_at - start:.0f} s after power-on"
                     + (f" (cleaned up: {', '.join(cleaned)})" if cleaned else ""))
        measured = {"moment": moment, "moment_reached": reached, "cut_s": round(cut - start, 1),
                    "formed_s": round(formed_at - start, 1) if formed else None,
                    "failures_after_formation": cleaned}
        return d.rows(self.name, initiator.name, event, start, ok and reached, measured)

    @staticmethod
    def wait_journal(con: NodeConsole, line: str, timeout: float) -> bool:
        """Until firstboot's journal holds `line` (polled as fast as the console answers)."""
        deadline = time.time() + timeout
        # One question per poll: 0 the line is there, 3 formed without passing it (a step already done), 1 neither.
        ask = (f"(journalctl -u pibuild-firstboot -o cat --no-pager | grep -qF {shlex.quote(line)} && exit 0; "
               f"test -e {plan.DONE_PATH} && exit 3; exit 1)")
        while time.time() < deadline:
            rc, _ = con.run(ask, timeout=60)
            if rc in (0, 3):
                return rc == 0
        return False


class LinkDown(Scenario):
    name = "link-down"

    def event(self, d: Drill, node: LabNode) -> None:
        netns.set_link(d.lab.ns, node.tap, up=False)

    def recover(self, d: Drill, node: LabNode) -> None:
        netns.set_link(d.lab.ns, node.tap, up=True)


# Every drill, in the order `lab drill` runs them by default.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    NamedStop(), NamedFreeze(), NodePoweroff(), NodeReplace(), LinkDown(),
    FormationPowercut(), *(FormationPowercut(m) for m in FormationPowercut.MOMENTS))}
# What a bare `lab drill` runs.
DEFAULT_SCENARIOS = [name for name, s in SCENARIOS.items() if s.by_default]


def drill(lab: Lab, scenarios: list[str], settings: list[Settings]) -> list[dict]:
    """Each scenario under each settings, from a healthy cluster; the rows of all, each with its settings' name."""
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    rows: list[dict] = []
    with consoles(lab) as cons, prober(lab) as samples, glibc_clients(lab) as glibc:
        d = Drill(lab, cons, samples, glibc)
        try:
            for s in settings:
                apply_settings(lab, d.cons, s)
                for name in scenarios:
                    if not d.make_healthy(RECOVERY_TIMEOUT):
                        raise PibuildError(f"the cluster is not healthy before {name}: `pibuild lab status`")
                    for row in SCENARIOS[name].run(d):
                        rows.append({**row, "settings": s.name})
                    if SCENARIOS[name].reforms_cluster:
                        apply_settings(lab, d.cons, s)   # new cards carry the image's settings
        finally:
            if len(settings) > 1 or settings[0].name == "seed":
                with contextlib.suppress(Exception):
                    apply_settings(lab, d.cons, settings_of(lab.cluster))
    return rows
