"""Up and down: the lab's LAN and VMs started, followed until the cluster formed and every VIP answers; and removed.

The LAN is one network namespace (builder.netns): a bridge, one tap per node, and the "client" (the namespace's
own addresses on the bridge: the gateway's, so BIND's forwarders get a fast ICMP refusal instead of a timeout).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from builder import netns, plan, progress, qemu, tools
from builder.config import Cluster
from builder.errors import PibuildError, UsageError
from builder.lab.client import prober_pid, vips_answering
from builder.lab.crm import ClusterState, cluster_state
from builder.lab.nodes import (
    BOOT_TIMEOUT,
    LOGIN_TIMEOUT,
    NodeConsole,
    consoles,
    kill_pids,
    prepare_vm,
    start_vm,
    vm_pid,
)
from builder.lab.state import Lab

FORM_TIMEOUT = 900          # firstboot forming the cluster
VIP_TIMEOUT = 180           # every VIP answering after the cluster formed
LOG_KEEP_ROOT = Path("/var/tmp/pibuild-lab-logs")


class LabExists(PibuildError):
    """A lab of this cluster is up already: `up` must not touch it."""


def images_for(cluster: Cluster, images: Path) -> dict[str, Path]:
    from builder.image import output_name
    found = {n.name: images / f"{output_name(cluster, n.name)}.img" for n in cluster.nodes}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise UsageError(f"no image {', '.join(missing)}: build them with `pibuild all -o {images}`")
    return found


def check_host() -> None:
    if os.geteuid() != 0:
        raise PibuildError("`pibuild lab` needs root (network namespaces, tap devices)")
    tools.require("ip", "qemu-img")


def up(lab: Lab, images: Path) -> float:
    """Boot the lab and wait until the cluster formed and every VIP answers; returns the seconds it took.

    A failure (or Ctrl-C) tears down what was started, keeping the serial logs for the post-mortem."""
    check_host()
    found = images_for(lab.cluster, images)
    if lab.dir.exists() or netns.exists(lab.ns):
        raise LabExists(f"a lab for {lab.cluster.name} is already up (or left over): `pibuild lab down` first")
    try:
        return _up(lab, images, found)
    except BaseException:
        progress.say("lab up failed: tearing the lab down")
        _keep_logs(lab)
        for what in down(lab):
            progress.say(f"  removed {what}")
        raise


def _up(lab: Lab, images: Path, found: dict[str, Path]) -> float:
    start = time.monotonic()
    lab.dir.mkdir(parents=True)
    (lab.dir / "lab.json").write_text(json.dumps({"ns": lab.ns, "images": str(images.resolve()),
                                                  "client": lab.client, "started": time.time()}))
    netns.create(lab.ns, [n.tap for n in lab.nodes], list(lab.client), lab.cluster.network.prefix)
    progress.say(f"namespace {lab.ns}: bridge {netns.BRIDGE}, taps {', '.join(n.tap for n in lab.nodes)}, "
                 f"client {', '.join(lab.client)}")
    for node in lab.nodes:
        node.dir.mkdir()
        prepare_vm(lab, node, found[node.name])
        start_vm(lab, node)
        progress.say(f"{node.name}: QEMU started (pid {vm_pid(node)}), serial log {node.log}")
    with progress.phase(f"lab up: {len(lab.nodes)} nodes boot, form cluster {lab.cluster.name}, every VIP answers"):
        wait_booted(lab, start)
        with consoles(lab) as cons:
            wait_formed(lab, cons, start)
        wait_vips(lab, start)
    took = time.monotonic() - start
    progress.say(f"lab up: cluster {lab.cluster.name} formed and every VIP answers, in {took:.0f} s")
    return took


def wait_booted(lab: Lab, start: float) -> None:
    pending = {n.name: n for n in lab.nodes}
    deadline = time.monotonic() + BOOT_TIMEOUT
    while pending:
        for name, node in list(pending.items()):
            if vm_pid(node) is None:
                raise PibuildError(f"{name}: QEMU exited during boot; see {node.log}")
            if "login: " in node.log.read_text(errors="replace"):
                progress.say(f"{name}: booted to the login prompt ({time.monotonic() - start:.0f} s)")
                del pending[name]
        if time.monotonic() > deadline:
            raise PibuildError(f"no login prompt from {', '.join(pending)} within {BOOT_TIMEOUT} s; see the serial "
                               f"logs under {lab.dir}")
        time.sleep(1)


def wait_formed(lab: Lab, cons: dict[str, NodeConsole], start: float) -> None:
    """Follow each node's firstboot journal on its console until every node wrote the done mark."""
    seen = {name: 0 for name in cons}
    pending = set(cons)
    deadline = time.monotonic() + FORM_TIMEOUT
    while pending:
        for name in sorted(pending):
            try:
                _, out = cons[name].run(f"journalctl -u pibuild-firstboot -o cat --no-pager; test -e {plan.DONE_PATH} "
                                        "&& echo @@FORMED", timeout=120)
            except qemu.ConsoleError as exc:
                progress.say(f"{name}: console: {exc}; retrying")
                cons[name].login(LOGIN_TIMEOUT)
                continue
            lines = [ln for ln in out.splitlines() if ln.strip() and ln != "@@FORMED"]
            for line in lines[seen[name]:]:
                progress.say(f"{name}: {line}")
            seen[name] = max(seen[name], len(lines))
            if "@@FORMED" in out.splitlines():
                progress.say(f"{name}: firstboot done ({time.monotonic() - start:.0f} s)")
                pending.discard(name)
        if time.monotonic() > deadline:
            raise PibuildError(f"the cluster did not form within {FORM_TIMEOUT} s (waiting for "
                               f"{', '.join(sorted(pending))}); see `journalctl -u pibuild-firstboot` there")
        if pending:
            time.sleep(5)


def wait_vips(lab: Lab, start: float) -> None:
    deadline = time.monotonic() + VIP_TIMEOUT
    reported: dict[str, bool] = {}
    while True:
        answering = vips_answering(lab)
        for vip, ok in answering.items():
            if ok and not reported.get(vip):
                progress.say(f"VIP {vip} answers DNS from the client ({time.monotonic() - start:.0f} s)")
            reported[vip] = ok
        if all(answering.values()):
            return
        if time.monotonic() > deadline:
            dead = [v for v, ok in answering.items() if not ok]
            raise PibuildError(f"VIP {', '.join(dead)} does not answer DNS within {VIP_TIMEOUT} s of forming")
        time.sleep(2)


def down(lab: Lab) -> list[str]:
    """Stop every VM, delete the namespace and the state (overlays included). Returns what was removed."""
    removed = []
    pids = [p for p in (vm_pid(n) for n in lab.nodes) if p is not None]
    if netns.exists(lab.ns):
        # Every process inside the lab's namespace is the lab's own (QEMU, a prober).
        out = tools.run(["ip", "netns", "pids", lab.ns], capture=True, check=False).stdout.decode()
        pids += [int(p) for p in out.split() if p.isdigit()]
    prober = prober_pid(lab)
    if prober is not None:
        pids.append(prober)
    pids = sorted(set(pids))
    if pids:
        kill_pids(pids)
        removed.append(f"{len(pids)} process(es) ({', '.join(map(str, pids))})")
    if netns.exists(lab.ns):
        netns.delete(lab.ns)
        removed.append(f"namespace {lab.ns}")
    if lab.dir.exists():
        shutil.rmtree(lab.dir)
        removed.append(f"{lab.dir} (overlays, logs, sockets)")
    return removed


def _keep_logs(lab: Lab) -> None:
    """Copy the serial logs out of the state dir before it goes (for the post-mortem)."""
    dest = LOG_KEEP_ROOT / lab.cluster.name
    for node in lab.nodes:
        if node.log.exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(node.log, dest / f"{node.name}.serial.log")
    if dest.exists():
        progress.say(f"serial logs kept in {dest}")


@dataclass(frozen=True)
class Status:
    """What `lab status` shows: the VMs, Pacemaker's view, which VIPs answer the client, `pcs status`."""

    pids: dict[str, int | None]
    state: ClusterState
    answering: dict[str, bool]
    pcs_status: str


def status(lab: Lab) -> Status:
    require_up(lab)
    pids = {n.name: vm_pid(n) for n in lab.nodes}
    with consoles(lab, [lab.nodes[0].name]) as cons:
        con = cons[lab.nodes[0].name]
        state = cluster_state(con)
        answering = vips_answering(lab)
        _, out = con.run("pcs status", timeout=120)
    return Status(pids, state, answering, out.rstrip())


def require_up(lab: Lab) -> None:
    if not lab.dir.exists() or not netns.exists(lab.ns):
        raise PibuildError(f"no lab for {lab.cluster.name} is up: `pibuild lab up --images DIR` first")
    dead = [n.name for n in lab.nodes if vm_pid(n) is None]
    if dead:
        raise PibuildError(f"the VM of {', '.join(dead)} is not running: `pibuild lab down`, then `up` again")
