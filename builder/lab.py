"""`pibuild lab`: the whole cluster in QEMU on a virtual LAN, and failover drills that measure the outage.

The LAN is one network namespace (builder.netns): a bridge, one tap per node, and the "client" (the namespace's
own addresses on the bridge: the gateway's, so BIND's forwarders get a fast ICMP refusal instead of a timeout).
Every node boots its image through a throw-away qcow2 overlay (builder.qemu, as `pibuild smoke`), daemonized
inside the namespace, with its serial console on a unix socket (any later `lab` process can reattach) and a
pidfile. Everything lives under STATE_ROOT/<cluster>/; `lab down` removes it all, also after a failed `up`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from pathlib import Path

import click
import pexpect
import pexpect.fdpexpect

from builder import netns, plan, probe, qemu, tools
from builder.config import Cluster
from builder.errors import PibuildError, UsageError

STATE_ROOT = Path("/run/pibuild/lab")
DONE_FILE = "/var/lib/pibuild/firstboot.done"
BOOT_TIMEOUT = 300          # to the login prompt (TCG, a loaded machine)
FORM_TIMEOUT = 900          # firstboot forming the cluster
VIP_TIMEOUT = 180           # every VIP answering after the cluster formed
MEMORY_MB = 768
# A loaded host stalls the guests: `login` itself may time out (60 s) once before the autologin shell answers.
LOGIN_TIMEOUT = 300
# ---- the lab's state on disk ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabNode:
    name: str
    address: str
    tap: str
    dir: Path

    @property
    def serial(self) -> Path:
        return self.dir / "serial.sock"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def argv_file(self) -> Path:
        return self.dir / "qemu.argv.json"


@dataclass(frozen=True)
class Lab:
    cluster: Cluster
    dir: Path
    ns: str
    nodes: tuple[LabNode, ...]
    client: tuple[str, ...]

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)


def client_addresses(cluster: Cluster) -> tuple[str, ...]:
    """The client's addresses: the gateway's (when it is in the subnet and free), else the highest free one."""
    used = {n.address for n in cluster.nodes} | {v.address for v in cluster.vips}
    subnet = cluster.subnet
    gateway = cluster.network.gateway
    if ipaddress.IPv4Address(gateway) in subnet and gateway not in used:
        return (gateway,)
    for host in reversed(list(subnet.hosts())):
        if str(host) not in used:
            return (str(host),)
    raise PibuildError(f"no free address in {subnet} for the lab's client")


def lab_for(cluster: Cluster) -> Lab:
    d = STATE_ROOT / cluster.name
    nodes = tuple(LabNode(n.name, n.address, f"tap{i}", d / n.name) for i, n in enumerate(cluster.nodes))
    return Lab(cluster, d, f"pibuild-{cluster.name}", nodes, client_addresses(cluster))


def say(message: str) -> None:
    """Progress, timestamped, on stderr: stdout carries only results (`drill --json` is parsed)."""
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


# ---- the VMs -------------------------------------------------------------------------------------------------

def daemon_argv(argv: list[str], node: LabNode) -> list[str]:
    """smoke's QEMU argv, detached: the serial console on a unix socket (logged to a file), QMP, a pidfile."""
    out = list(argv)
    i = out.index("-chardev")
    out[i + 1] = (f"socket,id=serial0,path={node.serial},server=on,wait=off,"
                  f"logfile={node.log},logappend=on")
    return [*out, "-qmp", f"unix:{node.qmp},server=on,wait=off", "-pidfile", str(node.pidfile), "-daemonize"]


def start_vm(lab: Lab, node: LabNode) -> None:
    argv = json.loads(node.argv_file.read_text())
    node.serial.unlink(missing_ok=True)
    node.qmp.unlink(missing_ok=True)
    tools.run(netns.exec_argv(lab.ns, argv), capture=True)


def prepare_vm(lab: Lab, node: LabNode, image: Path) -> None:
    vm = qemu.Vm(image=image, workdir=node.dir, serial_log=node.log, name=node.name, tap=node.tap,
                 memory_mb=MEMORY_MB, emulation_kernel=True)
    vm.prepare()
    node.argv_file.write_text(json.dumps(daemon_argv(vm.argv, node)))


def vm_pid(node: LabNode) -> int | None:
    """The QEMU pid from the pidfile, only while that process is still QEMU."""
    try:
        pid = int(node.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"qemu-system" in cmdline else None


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def power_off(node: LabNode) -> None:
    """Pull the power: SIGKILL, no shutdown."""
    pid = vm_pid(node)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


# ---- the console ---------------------------------------------------------------------------------------------

class NodeConsole(qemu.Console):
    """A root shell on a lab node's serial console, through its unix socket (reattachable from any process)."""

    def __init__(self, node: LabNode, timeout: float = LOGIN_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(node.serial))
        child = pexpect.fdpexpect.fdspawn(self.sock.fileno(), encoding="utf-8", codec_errors="replace",
                                          timeout=60, maxread=65536)
        super().__init__(child)
        self.name = node.name
        self.child.send("\n")
        self.login(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def ok(self, command: str, timeout: float = 120.0) -> str:
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise PibuildError(f"{self.name}: `{command}` exited {rc}: {out.strip()[-500:]}")
        return out


@contextlib.contextmanager
def consoles(lab: Lab, names: list[str] | None = None):
    opened: dict[str, NodeConsole] = {}
    try:
        for node in lab.nodes:
            if names is None or node.name in names:
                opened[node.name] = NodeConsole(node)
        yield opened
    finally:
        for c in opened.values():
            c.close()


# ---- what the cluster says -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterState:
    online: tuple[str, ...]
    where: dict[str, tuple[str, ...]]      # resource id -> nodes it is active on
    failed: tuple[str, ...]                # "resource on node" of failed actions


def parse_crm_mon(xml_text: str) -> ClusterState:
    start = xml_text.find("<")
    root = ET.fromstring(xml_text[start:])
    online = tuple(n.get("name") for nodes in root.iter("nodes") for n in nodes.iter("node")
                   if n.get("online") == "true")
    where: dict[str, list[str]] = {}
    for res in root.iter("resource"):
        if res.get("active") == "true" and res.get("failed") != "true":
            where.setdefault(res.get("id"), []).extend(n.get("name") for n in res.iter("node"))
    failed = tuple(f"{f.get('op_key', '?')} on {f.get('node', '?')}" for f in root.iter("failure"))
    return ClusterState(online, {k: tuple(v) for k, v in where.items()}, failed)


def cluster_state(console: NodeConsole) -> ClusterState:
    return parse_crm_mon(console.ok("crm_mon -1 --output-as=xml", timeout=60))


def healthy(lab: Lab, state: ClusterState) -> bool:
    """Every node online and every VIP on its most preferred node."""
    if set(state.online) != {n.name for n in lab.nodes}:
        return False
    return all(state.where.get(v.name) == (v.prefer[0],) for v in lab.cluster.vips)


# ---- the client ----------------------------------------------------------------------------------------------

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


# ---- up / down -----------------------------------------------------------------------------------------------

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
        say("lab up failed: tearing the lab down")
        _keep_logs(lab)
        for what in down(lab):
            say(f"  removed {what}")
        raise


def _up(lab: Lab, images: Path, found: dict[str, Path]) -> float:
    start = time.monotonic()
    lab.dir.mkdir(parents=True)
    (lab.dir / "lab.json").write_text(json.dumps({"ns": lab.ns, "images": str(images.resolve()),
                                                  "client": lab.client, "started": time.time()}))
    netns.create(lab.ns, [n.tap for n in lab.nodes], list(lab.client), lab.cluster.network.prefix)
    say(f"namespace {lab.ns}: bridge {netns.BRIDGE}, taps {', '.join(n.tap for n in lab.nodes)}, "
        f"client {', '.join(lab.client)}")
    for node in lab.nodes:
        node.dir.mkdir()
        prepare_vm(lab, node, found[node.name])
        start_vm(lab, node)
        say(f"{node.name}: QEMU started (pid {vm_pid(node)}), serial log {node.log}")
    wait_booted(lab, start)
    with consoles(lab) as cons:
        wait_formed(lab, cons, start)
    wait_vips(lab, start)
    took = time.monotonic() - start
    say(f"lab up: cluster {lab.cluster.name} formed and every VIP answers, in {took:.0f} s")
    return took


def wait_booted(lab: Lab, start: float) -> None:
    pending = {n.name: n for n in lab.nodes}
    deadline = time.monotonic() + BOOT_TIMEOUT
    while pending:
        for name, node in list(pending.items()):
            if vm_pid(node) is None:
                raise PibuildError(f"{name}: QEMU exited during boot; see {node.log}")
            if "login: " in node.log.read_text(errors="replace"):
                say(f"{name}: booted to the login prompt ({time.monotonic() - start:.0f} s)")
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
                _, out = cons[name].run(f"journalctl -u pibuild-firstboot -o cat --no-pager; test -e {DONE_FILE} "
                                        "&& echo @@FORMED", timeout=120)
            except qemu.ConsoleError as exc:
                say(f"{name}: console: {exc}; retrying")
                cons[name].login(LOGIN_TIMEOUT)
                continue
            lines = [ln for ln in out.splitlines() if ln.strip() and ln != "@@FORMED"]
            for line in lines[seen[name]:]:
                say(f"{name}: {line}")
            seen[name] = max(seen[name], len(lines))
            if "@@FORMED" in out.splitlines():
                say(f"{name}: firstboot done ({time.monotonic() - start:.0f} s)")
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
                say(f"VIP {vip} answers DNS from the client ({time.monotonic() - start:.0f} s)")
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
    prober = _prober_pid(lab)
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


def _prober_pid(lab: Lab) -> int | None:
    try:
        pid = int((lab.dir / "probe.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _keep_logs(lab: Lab) -> None:
    """Copy the serial logs out of the state dir before it goes (for the post-mortem)."""
    dest = Path("/var/tmp/pibuild-lab-logs") / lab.cluster.name
    for node in lab.nodes:
        if node.log.exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(node.log, dest / f"{node.name}.serial.log")
    if dest.exists():
        say(f"serial logs kept in {dest}")


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


# ---- reaction settings, applied to the running cluster -------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What decides how fast a VIP moves; all of it can change on the running cluster."""

    name: str
    monitor_interval: str
    query_timeout: int
    react_to_named_stop: bool
    token_ms: int

    def describe(self) -> str:
        react = "on" if self.react_to_named_stop else "off"
        return (f"monitor {self.monitor_interval}, query_timeout {self.query_timeout}s, "
                f"named-stop reaction {react}, token {self.token_ms} ms")


# The seed's: `op monitor interval=10s`, named's 5 s query, no reaction, corosync's default token.
SEED = Settings("seed", "10s", 5, False, 3000)
# The pacemaker.* keys of cluster.yaml that a drill sets on the running cluster (the bundled example pins them to
# the seed's values; without them a config drills with pibuild's defaults).
REACTION_KEYS = tuple(f.name for f in fields(Settings) if f.name != "name")


def settings_of(cluster: Cluster, name: str = "config") -> Settings:
    pm = cluster.pacemaker
    return Settings(name, pm.monitor_interval, pm.query_timeout, pm.react_to_named_stop, pm.token_ms)


def apply_settings(lab: Lab, cons: dict[str, NodeConsole], s: Settings) -> None:
    """Reconfigure the running cluster: named2's monitor and query timeout, the reaction switch, corosync's token."""
    first = cons[lab.nodes[0].name]
    for monitor in plan.monitor_resources(lab.cluster):
        first.ok(f"crm_resource --resource {monitor} --set-parameter query_timeout "
                 f"--parameter-value {s.query_timeout}")
        xml = first.ok(f"cibadmin --query --xpath \"//primitive[@id='{monitor}']/operations/op[@name='monitor']\"")
        op_id = ET.fromstring(xml[xml.find("<"):]).get("id")
        first.ok(f"cibadmin --modify --xml-text '<op id=\"{op_id}\" interval=\"{s.monitor_interval}\"/>'")
    react = "yes" if s.react_to_named_stop else "no"
    for con in cons.values():
        con.ok(f"echo {react} > /etc/pibuild/react-to-named-stop")
        con.ok(f"sed -i -E 's/^([[:space:]]*token:).*/\\1 {s.token_ms}/' /etc/corosync/corosync.conf")
    first.ok("corosync-cfgtool -R")
    got = first.ok("corosync-cmapctl -g runtime.config.totem.token").split("=")[-1].strip()
    say(f"settings {s.name}: {s.describe()} (corosync runs token {got} ms)")


# ---- drills --------------------------------------------------------------------------------------------------

SCENARIOS = ("named-stop", "named-freeze", "node-poweroff", "link-down")
SETTLE_S = 3.0          # every VIP answering this long: the failover (or the failback) is over
FAILOVER_TIMEOUT = 120
RECOVERY_TIMEOUT = 600  # a powered-off node boots again under TCG


@dataclass
class Drill:
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
        say(f"{what}: not every VIP answered within {timeout:.0f} s")
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

    def run(self, scenario: str) -> list[dict]:
        target = self.target()
        node = self.lab.node(target)
        say(f"{scenario}: on {target} (holds {self.lab.cluster.vips[0].address})")
        event = time.time()
        self.event(scenario, node)
        self.wait_settled(event, FAILOVER_TIMEOUT, f"{scenario}: failover")
        say(f"{scenario}: failed over; recovering {target}")
        recovery = time.time()
        self.recover(scenario, node)
        # Failback (manual: the cleanup) once the node is back in the cluster, asked on a node that stayed up.
        ok = self.wait_online(target, RECOVERY_TIMEOUT)
        self.failback(via=self.observer(target).name)
        ok = self.wait_healthy(RECOVERY_TIMEOUT, time.time(), avoid=target) and ok
        say(f"{scenario}: {'healthy again' if ok else 'NOT healthy again'} "
            f"({time.time() - recovery:.0f} s after the recovery began)")
        samples = self.samples(event)
        rows = []
        for vip in self.lab.cluster.vips:
            o = probe.outage(samples, vip.address, event, recovery)
            rows.append({"scenario": scenario, "vip": vip.address, "outage_s": o.outage_s,
                         "recovered": o.recovered and ok, "failback_s": o.failback_s, "node": target})
        return rows

    def event(self, scenario: str, node: LabNode) -> None:
        con = self.cons[node.name]
        if scenario == "named-stop":
            con.ok("systemctl stop named")
        elif scenario == "named-freeze":
            con.ok("pkill -STOP -x named")
        elif scenario == "node-poweroff":
            self.cons.pop(node.name).close()
            power_off(node)
        elif scenario == "link-down":
            netns.set_link(self.lab.ns, node.tap, up=False)
        else:
            raise UsageError(f"unknown scenario {scenario}; known: {', '.join(SCENARIOS)}")

    def recover(self, scenario: str, node: LabNode) -> None:
        if scenario == "named-stop":
            self.cons[node.name].ok("systemctl start named")
        elif scenario == "named-freeze":
            self.cons[node.name].ok("pkill -CONT -x named")
        elif scenario == "node-poweroff":
            mark = node.log.stat().st_size if node.log.exists() else 0
            start_vm(self.lab, node)
            wait_login_prompt(node, mark, BOOT_TIMEOUT)
            self.cons[node.name] = NodeConsole(node)
        elif scenario == "link-down":
            netns.set_link(self.lab.ns, node.tap, up=True)

    def failback(self, via: str | None = None) -> None:
        """Per the configured policy: manual is the seed's `pcs resource cleanup`; auto waits for failure-timeout."""
        if self.lab.cluster.pacemaker.failback == "manual":
            self.cons[via or self.lab.nodes[0].name].ok("crm_resource --cleanup", timeout=180)


def wait_login_prompt(node: LabNode, offset: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(node.log, "rb") as f:
            f.seek(offset)
            if b"login: " in f.read():
                return
        if vm_pid(node) is None:
            raise PibuildError(f"{node.name}: QEMU exited during boot; see {node.log}")
        time.sleep(1)
    raise PibuildError(f"{node.name}: no login prompt within {timeout:.0f} s; see {node.log}")


@contextlib.contextmanager
def prober(lab: Lab):
    """The client's queries, every 100 ms to every VIP, into a JSON-lines file for the whole drill."""
    path = lab.dir / f"probe-{int(time.time())}.jsonl"
    with open(path, "w") as out:
        proc = subprocess.Popen(probe_argv(lab), stdout=out, stderr=subprocess.DEVNULL)
    (lab.dir / "probe.pid").write_text(str(proc.pid))
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
        (lab.dir / "probe.pid").unlink(missing_ok=True)


def drill(lab: Lab, scenarios: list[str], settings: list[Settings]) -> list[dict]:
    rows: list[dict] = []
    with consoles(lab) as cons, prober(lab) as samples:
        d = Drill(lab, cons, samples)
        try:
            for s in settings:
                apply_settings(lab, d.cons, s)
                for scenario in scenarios:
                    if not d.make_healthy(RECOVERY_TIMEOUT):
                        raise PibuildError(f"the cluster is not healthy before {scenario}: `pibuild lab status`")
                    for row in d.run(scenario):
                        rows.append({**row, "settings": s.name})
        finally:
            if len(settings) > 1 or settings[0].name == "seed":
                with contextlib.suppress(Exception):
                    apply_settings(lab, d.cons, settings_of(lab.cluster))
    return rows


def table(rows: list[dict], settings: list[str]) -> str:
    head = f"{'scenario':<15}{'vip':<17}" + "".join(f"{s + ' outage':>16}{'recovered':>11}" for s in settings)
    lines = [head, "-" * len(head)]
    keys = list(dict.fromkeys((r["scenario"], r["vip"]) for r in rows))
    for scenario, vip in keys:
        line = f"{scenario:<15}{vip:<17}"
        for s in settings:
            r = next((r for r in rows if (r["scenario"], r["vip"], r["settings"]) == (scenario, vip, s)), None)
            line += f"{r['outage_s']:>15.1f}s{'yes' if r['recovered'] else 'NO':>11}" if r else f"{'-':>16}{'':>11}"
        lines.append(line)
    return "\n".join(lines)
