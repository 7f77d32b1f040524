"""The vip agent (ocf:pibuild:vip) on a real interface: two network namespaces joined by a veth pair, the agent run
in one as Pacemaker runs it, the other watching as a client on the LAN would (its ARP table)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "overlays/common/usr/lib/ocf/resource.d/pibuild/vip"
OCF_ROOT = Path("/usr/lib/ocf")
DTD_DIR = Path("/usr/share/resource-agents")
PATH = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/local/sbin:/usr/sbin:/sbin"
VIP = "10.77.0.11"
OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING = 0, 1, 6, 7

_numbers = itertools.count()


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool, path=PATH) is None:
            pytest.skip(f"{tool} is not installed")
    if not (OCF_ROOT / "lib/heartbeat/ocf-shellfuncs").is_file():
        pytest.skip("resource-agents is not installed")


@dataclass
class Lan:
    node: str      # where the agent runs; its interface is "lan0", 10.77.0.1/24
    client: str    # the other end, 10.77.0.254/24, accepting unsolicited ARP as a switch's hosts learn
    rsctmp: Path

    def agent(self, action: str, **params: str) -> subprocess.CompletedProcess:
        env = {"PATH": PATH, "OCF_ROOT": str(OCF_ROOT), "OCF_RA_VERSION_MAJOR": "1", "OCF_RA_VERSION_MINOR": "0",
               "OCF_RESOURCE_INSTANCE": "vip-test", "HA_RSCTMP": str(self.rsctmp),
               **{f"OCF_RESKEY_{k}": v for k, v in {"ip": VIP, "cidr_netmask": "24", "nic": "lan0",
                                                      **params}.items()}}
        return subprocess.run(["ip", "netns", "exec", self.node, str(AGENT), action], env=env,
                              capture_output=True, text=True, timeout=60)

    def addresses(self) -> str:
        return subprocess.run(["ip", "-n", self.node, "-4", "-o", "addr", "show", "dev", "lan0"],
                              capture_output=True, text=True, check=True).stdout

    def client_neighbour(self) -> str:
        return subprocess.run(["ip", "-n", self.client, "neigh", "show", VIP], capture_output=True, text=True,
                              check=True).stdout

    def node_mac(self) -> str:
        return subprocess.run(["ip", "netns", "exec", self.node, "cat", "/sys/class/net/lan0/address"],
                              capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def lan():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    _need("ip")
    n = next(_numbers)
    node, client = f"pibuild-vip-{os.getpid()}-{n}", f"pibuild-vipc-{os.getpid()}-{n}"
    rsctmp = Path(tempfile.mkdtemp(prefix="pibuild-vip-"))
    made = []
    try:
        for ns in (node, client):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        subprocess.run(["ip", "-n", node, "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
                        "netns", client], check=True)
        for ns, dev, addr in ((node, "lan0", "10.77.0.1/24"), (client, "lan1", "10.77.0.254/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", client, "sysctl", "-qw", "net.ipv4.conf.lan1.arp_accept=1"],
                       check=True)
        yield Lan(node, client, rsctmp)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(rsctmp, ignore_errors=True)


def test_agent_is_an_executable_posix_sh_script():
    assert AGENT.read_text().startswith("#!/bin/sh\n")
    assert AGENT.stat().st_mode & 0o777 == 0o755
    assert subprocess.run(["sh", "-n", str(AGENT)]).returncode == 0
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", str(AGENT)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_meta_data_is_valid_against_ra_api_dtd(tmp_path):
    _need("xmllint")
    if not (DTD_DIR / "ra-api-1.dtd").is_file():
        pytest.skip(f"no {DTD_DIR}/ra-api-1.dtd")
    env = {"PATH": PATH, "OCF_ROOT": str(OCF_ROOT), "HA_RSCTMP": str(tmp_path)}
    r = subprocess.run([str(AGENT), "meta-data"], env=env, capture_output=True, text=True)
    assert r.returncode == OCF_SUCCESS, r.stderr
    lint = subprocess.run(["xmllint", "--noout", "--valid", "-"], input=r.stdout, cwd=DTD_DIR,
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stderr
    root = ET.fromstring(r.stdout)
    required = {p.get("name") for p in root.iter("parameter") if p.get("required") == "1"}
    assert required == {"ip", "cidr_netmask", "nic"}
    assert {"start", "stop", "monitor", "meta-data", "validate-all"} <= {a.get("name") for a in root.iter("action")}


@pytest.mark.netns
def test_start_adds_and_announces_stop_removes(lan):
    assert lan.agent("monitor", OCF_RESKEY_CRM_meta_interval="0").returncode == OCF_NOT_RUNNING  # probe
    assert lan.client_neighbour() == ""
    for _ in range(2):  # start is idempotent
        r = lan.agent("start")
        assert r.returncode == OCF_SUCCESS, r.stderr
        assert f" inet {VIP}/24 brd 10.77.0.255 " in lan.addresses()
    assert lan.agent("monitor").returncode == OCF_SUCCESS
    # The client learned the address's new home from the gratuitous ARP alone: it never asked.
    deadline = time.monotonic() + 10
    while lan.node_mac() not in lan.client_neighbour() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lan.node_mac() in lan.client_neighbour(), lan.client_neighbour()
    for _ in range(2):  # stop is idempotent
        r = lan.agent("stop")
        assert r.returncode == OCF_SUCCESS, r.stderr
        assert VIP not in lan.addresses()
        assert lan.agent("monitor").returncode == OCF_NOT_RUNNING
    assert not list(lan.rsctmp.glob("send_arp-*")), "stop leaves no announcer behind"


def test_adding_or_removing_the_address_leaves_the_mark_named2_reads(lan):
    """ocf:pibuild:named2 gives BIND time to rescan its interfaces after an address moved: the mark is this agent's
    file under HA_RSCTMP, touched when it adds or removes the address and only then."""
    marker = lan.rsctmp / "address-changed"
    assert lan.agent("start").returncode == OCF_SUCCESS
    assert marker.exists()
    os.utime(marker, (0, 0))
    assert lan.agent("start").returncode == OCF_SUCCESS  # already there: nothing added
    assert marker.stat().st_mtime == 0
    assert lan.agent("stop").returncode == OCF_SUCCESS
    assert marker.stat().st_mtime > time.time() - 60
    os.utime(marker, (0, 0))
    assert lan.agent("stop").returncode == OCF_SUCCESS  # already gone: nothing removed
    assert marker.stat().st_mtime == 0
    assert '"${HA_RSCTMP}/address-changed"' in (AGENT.parent / "named2").read_text(), "named2 reads this file"


def _announcer_pid(lan: Lan, ip: str = VIP) -> int:
    """The pid send_arp wrote to the pidfile start gave it (it writes it itself, a moment after start)."""
    pidfile = lan.rsctmp / f"send_arp-{ip}"
    deadline = time.monotonic() + 10
    while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(pidfile.read_text().split()[0])


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


# An announcer that keeps going for a minute, so it is still running when stop comes.
LONG_ANNOUNCER = {"arp_count": "600", "arp_interval": "100"}


@pytest.mark.netns
def test_stop_ends_the_announcer_start_ran(lan):
    assert lan.agent("start", **LONG_ANNOUNCER).returncode == OCF_SUCCESS
    pid = _announcer_pid(lan)
    assert os.path.samefile(f"/proc/{pid}/exe", "/usr/libexec/heartbeat/send_arp")
    assert lan.agent("stop", **LONG_ANNOUNCER).returncode == OCF_SUCCESS
    assert _gone_within(pid, 5), "stop ends its own announcer"
    assert not (lan.rsctmp / f"send_arp-{VIP}").exists()


@pytest.mark.netns
def test_a_stale_pidfile_never_gets_another_process_killed(lan):
    """The pidfile outlived its send_arp and the number now belongs to another process: neither stop nor start (whose
    send_arp would SIGKILL whatever an existing pidfile names) may end that process."""
    bystander = subprocess.Popen(["sleep", "300"])
    other_vip = "10.77.0.12"
    pidfile = lan.rsctmp / f"send_arp-{VIP}"
    try:
        # Another address's announcer is send_arp too, but not this address's: it must survive as well.
        assert lan.agent("start", ip=other_vip, **LONG_ANNOUNCER).returncode == OCF_SUCCESS
        other_announcer = _announcer_pid(lan, other_vip)
        for stale in (bystander.pid, other_announcer):
            # This address's own announcer, ended by stop: nothing of it is left to write or read the pidfile.
            assert lan.agent("start", **LONG_ANNOUNCER).returncode == OCF_SUCCESS
            own = _announcer_pid(lan)
            assert lan.agent("stop", **LONG_ANNOUNCER).returncode == OCF_SUCCESS
            assert _gone_within(own, 5)
            pidfile.write_text(f"{stale}\n")
            r = lan.agent("stop", **LONG_ANNOUNCER)
            assert r.returncode == OCF_SUCCESS, r.stderr
            assert not pidfile.exists() and VIP not in lan.addresses()
            pidfile.write_text(f"{stale}\n")
            r = lan.agent("start", **LONG_ANNOUNCER)
            assert r.returncode == OCF_SUCCESS, r.stderr
            own = _announcer_pid(lan)
            assert own != stale and f" inet {VIP}/24 " in lan.addresses()
            assert lan.agent("stop", **LONG_ANNOUNCER).returncode == OCF_SUCCESS
            assert _gone_within(own, 5)
            assert bystander.poll() is None, "an unrelated process was killed"
            assert _alive(other_announcer), "another address's announcer was killed"
        assert lan.agent("stop", ip=other_vip, **LONG_ANNOUNCER).returncode == OCF_SUCCESS
        assert _gone_within(other_announcer, 5)
    finally:
        bystander.kill()
        bystander.wait()
        lan.agent("stop", ip=other_vip)
        lan.agent("stop")


@pytest.mark.netns
def test_an_address_removed_by_hand_fails_the_monitor(lan):
    assert lan.agent("start").returncode == OCF_SUCCESS
    subprocess.run(["ip", "-n", lan.node, "addr", "del", f"{VIP}/24", "dev", "lan0"], check=True)
    assert lan.agent("monitor").returncode == OCF_NOT_RUNNING
    assert lan.agent("stop").returncode == OCF_SUCCESS


@pytest.mark.netns
@pytest.mark.parametrize("params, reason", [
    ({"ip": "10.77.0.300"}, "not an IPv4 address"),
    ({"ip": "10.77.0"}, "not an IPv4 address"),
    ({"cidr_netmask": "33"}, "not a prefix length"),
    ({"nic": ""}, "are required"),
])
def test_bad_parameters_are_configuration_errors(lan, params, reason):
    r = lan.agent("validate-all", **params)
    assert r.returncode == OCF_ERR_CONFIGURED and reason in r.stderr, (r.returncode, r.stderr)
    assert lan.agent("start", **params).returncode == OCF_ERR_CONFIGURED


@pytest.mark.netns
def test_a_missing_interface_is_not_installed_here(lan):
    r = lan.agent("start", nic="nosuch0")
    assert r.returncode == 5 and "No interface nosuch0" in r.stderr, (r.returncode, r.stderr)  # OCF_ERR_INSTALLED
    assert lan.agent("monitor", nic="nosuch0").returncode == OCF_NOT_RUNNING


@pytest.mark.netns
def test_ocf_tester_passes(lan):
    _need("ocf-tester", "xmllint", "su")
    # A copy in a 0755 directory: ocf-tester runs meta-data as nobody, who may not reach the checkout.
    workdir = Path(tempfile.mkdtemp(prefix="pibuild-vip-tester-"))
    try:
        workdir.chmod(0o755)
        agent = workdir / "vip"
        shutil.copy2(AGENT, agent)
        env = {"PATH": PATH, "OCF_ROOT": str(OCF_ROOT), "HA_RSCTMP": str(lan.rsctmp)}
        p = subprocess.run(["ip", "netns", "exec", lan.node, "ocf-tester", "-n", "vip-test", "-o", f"ip={VIP}",
                            "-o", "cidr_netmask=24", "-o", "nic=lan0", str(agent)],
                           env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "passed all tests" in p.stdout
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def two_nodes():
    """Two nodes and a client on one bridge (in the client's namespace), as a LAN with two Pis: node i's interface
    is "lan0" with 10.77.0.i/24; the client (10.77.0.254) accepts unsolicited ARP as a switch's hosts learn."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    _need("ip")
    n = next(_numbers)
    nodes = [f"pibuild-vipm{i}-{os.getpid()}-{n}" for i in (1, 2)]
    client = f"pibuild-vipmc-{os.getpid()}-{n}"
    rsctmps = [Path(tempfile.mkdtemp(prefix="pibuild-vip-")) for _ in nodes]
    made = []
    try:
        for ns in (*nodes, client):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", client, "link", "add", "br0", "type", "bridge", "forward_delay", "0"], check=True)
        subprocess.run(["ip", "-n", client, "addr", "add", "10.77.0.254/24", "dev", "br0"], check=True)
        subprocess.run(["ip", "-n", client, "link", "set", "br0", "up"], check=True)
        for i, ns in enumerate(nodes, 1):
            subprocess.run(["ip", "-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", f"port{i}",
                            "netns", client], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", f"10.77.0.{i}/24", "dev", "lan0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lan0", "up"], check=True)
            subprocess.run(["ip", "-n", client, "link", "set", f"port{i}", "master", "br0", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", client, "sysctl", "-qw", "net.ipv4.conf.br0.arp_accept=1"], check=True)
        yield [Lan(ns, client, rsctmp) for ns, rsctmp in zip(nodes, rsctmps, strict=True)]
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        for rsctmp in rsctmps:
            shutil.rmtree(rsctmp, ignore_errors=True)


def _client_reaches(lan: Lan, mac: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while mac not in lan.client_neighbour() and time.monotonic() < deadline:
        time.sleep(0.05)
    return mac in lan.client_neighbour()


@pytest.mark.netns
def test_a_migration_overlaps_the_address_is_never_on_no_node(two_nodes):
    """Pacemaker's order for allow-migrate: migrate_to on the old node, migrate_from on the new one, stop on the old
    one. The address stays on the old node until the new one holds it and announced it."""
    old, new = two_nodes
    assert old.agent("start").returncode == OCF_SUCCESS
    assert _client_reaches(old, old.node_mac())
    assert _gone_within(_announcer_pid(old), 5)   # long done when a move comes
    r = old.agent("migrate_to", OCF_RESKEY_CRM_meta_migrate_target="new")
    assert r.returncode == OCF_SUCCESS, r.stderr
    assert f" inet {VIP}/24 " in old.addresses() and old.agent("monitor").returncode == OCF_SUCCESS
    r = new.agent("migrate_from", OCF_RESKEY_CRM_meta_migrate_source="old")
    assert r.returncode == OCF_SUCCESS, r.stderr
    assert f" inet {VIP}/24 " in new.addresses() and f" inet {VIP}/24 " in old.addresses()
    # The new node's gratuitous ARP moved the client while the old node still had the address.
    assert _client_reaches(new, new.node_mac())
    assert old.agent("stop").returncode == OCF_SUCCESS
    assert VIP not in old.addresses() and new.agent("monitor").returncode == OCF_SUCCESS
    assert new.node_mac() in new.client_neighbour()
    assert new.agent("stop").returncode == OCF_SUCCESS


def test_meta_data_offers_migration():
    env = {"PATH": PATH, "OCF_ROOT": str(OCF_ROOT), "HA_RSCTMP": "/tmp"}
    r = subprocess.run([str(AGENT), "meta-data"], env=env, capture_output=True, text=True)
    actions = {a.get("name") for a in ET.fromstring(r.stdout).iter("action")}
    assert {"migrate_to", "migrate_from"} <= actions
