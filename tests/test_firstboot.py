"""firstboot/pibuild-firstboot against fake `pcs`, `crm_mon`, `cibadmin` and `systemctl` on PATH.

The fakes record every call (argv and stdin) in calls.jsonl and act on a small model of one node's cluster state
(fake-state.json plus the real corosync.conf / cib.xml paths under PIBUILD_ROOT), so a rerun sees what an earlier
run left behind. A `fail` entry in the state makes a chosen call exit 1 ("exit") or, after it took effect, SIGKILL
the script ("kill": a power cut at that step). pcsd's TCP port is a real listener on loopback: the test plans are
real rendered plans with only pcsd_port and the node addresses moved to 127.0.0.x.
"""

from __future__ import annotations

import configparser
import copy
import fcntl
import inspect
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from builder import config, plan, render

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "firstboot" / "pibuild-firstboot"
UNIT = REPO / "firstboot" / "pibuild-firstboot.service"
EXAMPLE = REPO / "examples" / "cluster.yaml"
PASSWORD = "Tr0ub4dor&3-hacluster"
# The cluster's corosync authkey as the image carries it (builder/secrets.py derives the real one).
AUTHKEY = bytes(range(256))
TIMEOUT = 20

# What Debian's corosync package ships: the one-node cluster `pcs cluster destroy` must remove.
DEBIAN_COROSYNC_CONF = """\
# Please read the corosync.conf.5 manual page
totem {
\tversion: 2
\tcluster_name: debian
\tcrypto_cipher: none
\tcrypto_hash: none
}

logging {
\tfileline: off
\tto_stderr: yes
\tto_logfile: yes
\tlogfile: /var/log/corosync/corosync.log
\tto_syslog: yes
\tdebug: off
\tlogger_subsys {
\t\tsubsys: QUORUM
\t\tdebug: off
\t}
}

quorum {
\tprovider: corosync_votequorum
}

nodelist {
\tnode {
\t\tname: node1
\t\tnodeid: 1
\t\tring0_addr: 127.0.0.1
\t}
}
"""


def corosync_conf(name: str, nodes: list[str]) -> str:
    """A corosync.conf as `pcs cluster setup` writes it (also pasted into the fake pcs)."""
    blocks = "".join(f"    node {{\n        ring0_addr: 10.0.0.{i}\n        name: {n}\n        nodeid: {i}\n    }}\n"
                     for i, n in enumerate(nodes, 1))
    return (f"totem {{\n    version: 2\n    cluster_name: {name}\n    transport: knet\n}}\n\n"
            f"nodelist {{\n{blocks}}}\n\nquorum {{\n    provider: corosync_votequorum\n}}\n")


FAKE = inspect.getsource(corosync_conf) + r'''
# Kept to os/json/fcntl (ElementTree only where needed): it starts once per call, so it must start fast.
import fcntl, json, os, signal, sys

FAKE_DIR = os.environ["FAKE_DIR"]
ROOT = os.environ["PIBUILD_ROOT"]
CONF = ROOT + "/etc/corosync/corosync.conf"
CIB = ROOT + "/var/lib/pacemaker/cib/cib.xml"
KEY = ROOT + "/etc/corosync/authkey"
PLAN = ROOT + "/etc/pibuild/firstboot.json"


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def remove(path):
    if os.path.exists(path):
        os.unlink(path)


def conf_nodes():
    if not os.path.exists(CONF):
        return []
    return [line.split(":", 1)[1].strip() for line in read(CONF).splitlines() if line.strip().startswith("name:")]


def key_hex():
    if not os.path.exists(KEY):
        return None
    with open(KEY, "rb") as f:
        return f.read().hex()


def in_membership(state):
    """The peers' corosync accepts this node only with the same key: peer_key None means they hold this node's."""
    return state.get("peer_key") is None or state["peer_key"] == key_hex()


def resources_xml(ids):
    return "<resources>" + "".join(
        f'<group id="g-{r}"><primitive id="{r}" class="ocf" type="x">'
        f'<instance_attributes id="{r}-instance_attributes"/></primitive></group>' for r in ids) + "</resources>"


def file_resources(path):
    import xml.etree.ElementTree as ET
    return [p.get("id") for p in ET.parse(path).getroot().iter("primitive")]


def remote_timeout(args, state):
    """A call to other nodes' pcsd: an error like pcs's when pcsd answers slower than the request timeout."""
    timeout = 60
    for arg in args:
        if arg.startswith("--request-timeout="):
            timeout = int(arg.split("=", 1)[1])
    if state.get("pcsd_answer_s", 0) > timeout:
        return (f"Error: Unable to communicate with dns-pm02: Connection timeout (Operation timed out after "
                f"{timeout * 1000 + 31} milliseconds with 0 bytes received)")
    return None


def pcs(args, stdin, state):
    if args[:2] == ["cluster", "destroy"]:
        remove(CONF)
        remove(CIB)
        remove(KEY)
        state.update(running=False, corosync=False, resources=[], admin_epoch=0)
        return 0, "Shutting down pacemaker/corosync services...\nRemoving all cluster configuration files..."
    if args[:2] == ["host", "auth"]:
        if stdin.rstrip("\n") != state["password"]:
            return 1, "Error: Unable to authenticate: bad password"
        timed_out = remote_timeout(args, state)
        if timed_out:
            return 1, timed_out
        state["auth"] = True
        return 0, "\n".join(f"{n}: Authorized" for n in args[2:] if not n.startswith("-") and n != "hacluster")
    if args[:2] == ["cluster", "setup"]:
        # Local mode only: a live setup's remote destroy is what hit pcs's fixed 60 s (issue 14).
        if "--corosync_conf" not in args:
            return 1, "fake pcs: a live cluster setup asks every pcsd to destroy first; use --corosync_conf"
        target = ROOT + args[args.index("--corosync_conf") + 1]
        if os.path.exists(target) and "--overwrite" not in args:
            return 1, f"Error: Corosync configuration file '{target}' already exists, use --overwrite"
        nodes = []
        for arg in args[3:]:
            if arg == "totem" or arg.startswith("--"):
                break
            if not arg.startswith("addr="):
                nodes.append(arg)
        write(target, corosync_conf(args[2], nodes))
        return 0, ""
    if args[:2] == ["cluster", "cib"]:
        if not state["running"]:
            return 1, "Error: unable to get cib"
        write(args[2], f"<cib><configuration>{resources_xml(state['resources'])}</configuration></cib>")
        return 0, ""
    if args[:2] == ["cluster", "cib-push"]:
        if not state["running"] or args[3:] != ["--config"]:
            return 1, "Error: unable to push cib"
        state["resources"] = file_resources(args[2])
        return 0, "CIB updated"
    if args[:1] == ["-f"]:
        path, command = args[1], args[2:]
        if not os.path.exists(path):
            return 1, f"Error: {path} does not exist"
        if command[:2] == ["resource", "create"]:
            import xml.etree.ElementTree as ET
            tree = ET.parse(path)
            if command[2] in file_resources(path):
                return 1, f"Error: '{command[2]}' already exists"
            ET.SubElement(tree.getroot().find("configuration/resources"), "primitive", id=command[2])
            tree.write(path)
        return 0, ""
    return 1, f"fake pcs: unknown command {args}"


def act(tool, args, stdin, state):
    if tool == "systemctl" and args[:2] == ["enable", "--now"] and "corosync.service" in args:
        if not os.path.exists(CONF):
            return 1, "corosync.service: Can't read file /etc/corosync/corosync.conf"
        if not os.path.exists(KEY):
            return 1, "corosync.service: Could not open /etc/corosync/authkey"
        state.update(running=True, corosync=True)
        if state.get("peer_resources") is not None and in_membership(state):
            # Joining peers that run the configured cluster: Pacemaker gives this node their CIB.
            state.update(resources=list(state["peer_resources"]), admin_epoch=state.get("peer_admin_epoch", 1))
        return 0, ""
    if tool == "systemctl":
        return 0, ""
    if tool == "pcs":
        return pcs(args, stdin, state)
    if not state["running"]:
        return (102, "crm_mon: Error: cluster is not available on this node") if tool == "crm_mon" else \
            (107, "Could not connect to the CIB: Transport endpoint is not connected")
    if tool == "cibadmin" and args == ["--query", "--no-children"]:
        return 0, f'<cib epoch="7" num_updates="3" admin_epoch="{state.get("admin_epoch", 0)}"/>'
    if tool == "cibadmin" and args[:2] == ["--modify", "--xml-text"]:
        import xml.etree.ElementTree as ET
        root = ET.fromstring(args[2])
        if root.tag != "cib" or set(root.attrib) != {"admin_epoch"}:
            return 1, f"fake cibadmin: unexpected modification {args[2]}"
        state["admin_epoch"] = int(root.get("admin_epoch"))
        return 0, ""
    if tool == "cibadmin" and args[:3] == ["--replace", "--scope", "configuration"]:
        pushed = read(args[args.index("--xml-file") + 1])
        write(FAKE_DIR + "/pushed.xml", pushed)
        state["resources"] = file_resources(FAKE_DIR + "/pushed.xml")
        return 0, ""
    if tool == "cibadmin" and args == ["--query", "--scope", "configuration"]:
        # What Pacemaker writes itself once the cluster runs: the nodes and a few bootstrap options.
        return 0, ('<configuration><crm_config><cluster_property_set id="cib-bootstrap-options">'
                   '<nvpair id="cib-bootstrap-options-cluster-name" name="cluster-name" value="clst-01"/>'
                   '<nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="true"/>'
                   '</cluster_property_set></crm_config><nodes><node id="1" uname="dns-pm01"/></nodes>'
                   + resources_xml(state["resources"]) + "<constraints/></configuration>")
    if tool == "cibadmin":
        return 0, resources_xml(state["resources"])
    with open(PLAN) as f:
        me = json.load(f)["node"]

    def online(n):
        return n not in state["offline"] and (n == me or in_membership(state))

    nodes = "".join(f'<node name="{n}" id="{i}" online="{str(online(n)).lower()}" type="member"/>'
                    for i, n in enumerate(conf_nodes(), 1))
    # Resource entries hold <node> elements too (without online=): the script must not count them.
    located = "".join(f'<resource id="{r}"><node name="{state["offline"][0]}" id="9" cached="true"/></resource>'
                      for r in state["resources"] if state["offline"])
    return 0, (f'<pacemaker-result api-version="2.30" request="crm_mon -1 --output-as=xml"><nodes>{nodes}</nodes>'
               f'<resources>{located}</resources><status code="0" message="OK"/></pacemaker-result>')


def main():
    tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    stdin = sys.stdin.read()
    state_file = FAKE_DIR + "/fake-state.json"
    with open(FAKE_DIR + "/fake.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(read(state_file))
        fail, injected = state.get("fail"), None
        if fail and fail["times"] > 0 and " ".join([tool, *args]).startswith(fail["match"]):
            fail["times"] -= 1
            injected = fail["mode"]
        rc, out = (1, "Error: injected failure") if injected == "exit" else act(tool, args, stdin, state)
        write(state_file, json.dumps(state))
        with open(FAKE_DIR + "/calls.jsonl", "a") as calls:
            calls.write(json.dumps({"argv": [tool, *args], "stdin": stdin, "rc": rc, "injected": injected,
                                    "skip_sysv": os.environ.get("SYSTEMCTL_SKIP_SYSV")}) + "\n")
    if injected == "kill":
        os.kill(os.getppid(), signal.SIGKILL)
    print(out)
    sys.exit(rc)


main()
'''


# --- plans -----------------------------------------------------------------------------------------------------------

def example_data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def three_node_data() -> dict:
    data = example_data()
    data["nodes"].append({"name": "dns-pm03", "address": "192.168.100.3", "model": "pi4b"})
    del data["pacemaker"]["no_quorum_policy"]  # the example's ignore is for two nodes only
    data["vips"].append({"name": "rs-vip-3", "address": "192.168.100.13", "prefer": ["dns-pm03", "dns-pm01"],
                         "group": "rg-03", "monitor": "monitor-named3"})
    return data


def make_plan(data: dict, node: str) -> dict:
    return plan.firstboot_plan(config.from_dict(data, EXAMPLE), node)


# --- the harness -----------------------------------------------------------------------------------------------------

class Pcsd:
    """A pcsd stand-in: a TCP port on a loopback address, bound (so connections are refused) until up()."""

    def __init__(self, address: str, port: int):
        self.sock = socket.socket()
        self.sock.bind((address, port))

    def up(self) -> None:
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Run:
    """The script running in the background; its output is read line by line."""

    def __init__(self, argv: list[str], env: dict):
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {timeout} s; output:\n" + self.output) from None
            if line is None:
                raise AssertionError(f"the script ended without printing {text!r}; output:\n" + self.output)
            self.lines.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the script did not finish; output so far:\n" + self.output) from None
        self._reader.join(timeout)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return rc

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Node:
    """One node's world in a temp dir: root tree, fake tools, state, pcsd listeners."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.root = tmp / "root"
        self.bin = tmp / "bin"
        self.fake_dir = tmp / "fake"
        for d in (self.root, self.bin, self.fake_dir):
            d.mkdir()
        fake = self.bin / "fake-tool"
        fake.write_text(f"#!{sys.executable} -S\n{FAKE}")
        fake.chmod(0o755)
        for tool in ("pcs", "crm_mon", "cibadmin", "systemctl"):
            (self.bin / tool).symlink_to(fake.name)
        self.pcsd: dict[str, Pcsd] = {}
        self.runs: list[Run] = []
        self.plan: dict = {}

    # setup

    def install(self, the_plan: dict, peers_up: bool = True, local_up: bool = True) -> dict:
        """Write the plan (pcsd moved to loopback) and the initiator's secret; start the pcsd listeners."""
        the_plan = copy.deepcopy(the_plan)
        for i, n in enumerate(the_plan["nodes"]):
            n["address"] = f"127.0.0.{i + 1}"
        the_plan["pcsd_port"] = self._bind_pcsds(the_plan)
        for name, pcsd in self.pcsd.items():
            if (name == "local" and local_up) or (name != "local" and peers_up):
                pcsd.up()
        self.write(plan.CONFIG_PATH, json.dumps(the_plan, indent=2))
        self.write_bytes(the_plan["shipped_authkey"], AUTHKEY, mode=0o400)
        if the_plan["is_initiator"]:
            self.write(the_plan["password_file"], PASSWORD + "\n", mode=0o600)
        self.plan = the_plan
        return the_plan

    def _bind_pcsds(self, the_plan: dict) -> int:
        for _ in range(20):
            try:
                local = Pcsd("127.0.0.1", 0)
                port = local.sock.getsockname()[1]
                # Only the initiator probes its peers.
                peers = {n["name"]: Pcsd(n["address"], port) for n in the_plan["nodes"]
                         if the_plan["is_initiator"] and n["name"] != the_plan["node"]}
            except OSError:
                continue
            self.pcsd = {"local": local, **peers}
            return port
        raise RuntimeError("no free port for the pcsd stand-ins")

    def write(self, absolute: str, text: str, mode: int = 0o644) -> Path:
        target = self.path(absolute)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    def write_bytes(self, absolute: str, data: bytes, mode: int) -> Path:
        target = self.path(absolute)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
        return target

    def path(self, absolute: str) -> Path:
        return Path(str(self.root) + absolute)

    def debian_default_cluster(self) -> None:
        """A node as the packages leave it: Debian's one-node cluster configured and running."""
        self.write("/etc/corosync/corosync.conf", DEBIAN_COROSYNC_CONF)
        self.write("/var/lib/pacemaker/cib/cib.xml", "<cib/>")
        self.set_state(running=True)

    def formed_cluster(self, running: bool = True, resources: list[str] | None = None,
                       offline: tuple[str, ...] = (), admin_epoch: int = 1) -> None:
        """This plan's cluster set up on the node by an earlier run."""
        self.write_bytes("/etc/corosync/authkey", AUTHKEY, mode=0o400)
        self.our_corosync_conf()
        self.write("/var/lib/pacemaker/cib/cib.xml", "<cib/>")
        self.set_state(running=running, corosync=running, offline=list(offline), admin_epoch=admin_epoch,
                       resources=list(self.plan["resources"] if resources is None else resources))

    def our_corosync_conf(self) -> None:
        self.write("/etc/corosync/corosync.conf",
                   corosync_conf(self.plan["cluster"], [n["name"] for n in self.plan["nodes"]]))

    def peers_run_the_cluster(self, key: bytes = AUTHKEY) -> None:
        """The other nodes run a formed cluster whose corosync holds key."""
        self.set_state(peer_key=key.hex(), peer_resources=list(self.plan["resources"]), peer_admin_epoch=1)

    # fake state

    @contextmanager
    def _locked(self):
        with open(self.fake_dir / "fake.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def state(self) -> dict:
        """The fake cluster's state, read under the lock the fake tools write it under (not half-written)."""
        with self._locked():
            return self._read_state()

    def _read_state(self) -> dict:
        path = self.fake_dir / "fake-state.json"
        if path.exists():
            return json.loads(path.read_text())
        return {"running": False, "corosync": False, "resources": [], "auth": False, "offline": [],
                "password": PASSWORD, "fail": None, "admin_epoch": 0, "peer_key": None, "peer_resources": None}

    def set_state(self, **changes) -> None:
        with self._locked():
            state = self._read_state()
            state.update(changes)
            (self.fake_dir / "fake-state.json").write_text(json.dumps(state))

    def fail(self, match: str, mode: str = "exit", times: int = 1) -> None:
        self.set_state(fail={"match": match, "mode": mode, "times": times})

    def calls(self) -> list[dict]:
        path = self.fake_dir / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def argvs(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls()]

    # running the script

    def start(self, max_attempts: int | None = None) -> Run:
        if not (self.fake_dir / "fake-state.json").exists():
            self.set_state()
        env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "PIBUILD_ROOT": str(self.root),
               "PIBUILD_FIRSTBOOT_FAST": "1", "FAKE_DIR": str(self.fake_dir)}
        if max_attempts:
            env["PIBUILD_FIRSTBOOT_MAX_ATTEMPTS"] = str(max_attempts)
        run = Run([sys.executable, str(SCRIPT)], env)
        self.runs.append(run)
        return run

    def run(self, max_attempts: int | None = None) -> tuple[int, Run]:
        run = self.start(max_attempts)
        return run.finish(), run

    def close(self) -> None:
        for run in self.runs:
            run.kill()
        for pcsd in self.pcsd.values():
            pcsd.close()

    # outcomes

    @property
    def cib_file(self) -> str:
        return str(self.path(self.plan["state_dir"])) + "/firstboot-cib.xml"

    def assert_formed_and_done(self) -> None:
        state = self.state()
        assert self.path(self.plan["done_file"]).exists()
        assert not self.path(self.plan["password_file"]).exists()
        assert not Path(self.cib_file).exists()
        assert not self.path(self.plan["shipped_authkey"]).exists(), "the image's copy of the key stays behind"
        assert sorted(state["resources"]) == sorted(self.plan["resources"])
        assert state["running"] and state["corosync"]
        assert state["admin_epoch"] == 1
        conf = self.path("/etc/corosync/corosync.conf").read_text()
        assert f"cluster_name: {self.plan['cluster']}" in conf
        key = self.path("/etc/corosync/authkey")
        assert key.read_bytes() == AUTHKEY and (key.stat().st_mode & 0o777) == 0o400


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    yield n
    n.close()


def remote(argv: list[str], timeout: int = 60) -> list[str]:
    """A pcs call to other nodes' pcsd as firstboot makes it: with the request timeout of its pass."""
    return [*argv, f"--request-timeout={timeout}"]


QUERY = ["cibadmin", "--query", "--scope", "resources"]
CRM_MON = ["crm_mon", "-1", "--output-as=xml"]
EPOCH_QUERY = ["cibadmin", "--query", "--no-children"]
MARK = ["cibadmin", "--modify", "--xml-text", '<cib admin_epoch="1"/>']


def initiator_sequence(p: dict, cib_file: str) -> list[list[str]]:
    """Every call of a first boot on the initiator when every peer is up, in order."""
    commands = p["commands"]
    return [
        ["systemctl", "start", "pcsd"],
        commands["destroy"],
        commands["setup"],  # local: this node's corosync.conf, the same every node makes
        commands["start"],
        QUERY, CRM_MON,  # every node online here, so every node holds this cluster's key
        QUERY,  # what the live CIB holds: nothing yet, so this is the first formation
        remote(commands["auth"]),  # in the cluster already: pcsd copies the tokens to every node
        ["pcs", "cluster", "cib", cib_file],
        *[["pcs", "-f", cib_file, *c] for c in commands["cib"]],
        ["pcs", "cluster", "cib-push", cib_file, "--config"],
        EPOCH_QUERY, MARK,
        QUERY, CRM_MON,
    ]


def member_sequence(p: dict) -> list[list[str]]:
    """Every call of a first boot on a member that finds the cluster formed once it started."""
    return [["systemctl", "start", "pcsd"], p["commands"]["destroy"], p["commands"]["setup"], p["commands"]["start"],
            QUERY, CRM_MON]


def assert_one_setup_one_push(node: Node) -> None:
    """The rerun invariants: corosync.conf is made, never destroyed afterwards, the configuration pushed once."""
    calls = node.calls()
    ok = [i for i, c in enumerate(calls) if c["rc"] == 0 and c["injected"] != "exit"]
    setups = [i for i in ok if calls[i]["argv"] == node.plan["commands"]["setup"]]
    destroys = [i for i, c in enumerate(calls) if c["argv"] == node.plan["commands"]["destroy"]]
    pushes = [i for i in ok if calls[i]["argv"][:3] == ["pcs", "cluster", "cib-push"]]
    # A second (local, harmless) setup only where a power cut hit before corosync.conf was in place.
    assert 1 <= len(setups) <= 2, [c["argv"] for c in calls]
    assert all(d < setups[0] for d in destroys), "destroyed the cluster after setting it up"
    assert len(pushes) == 1, "the configuration was pushed more than once"
    conf = node.path("/etc/corosync/corosync.conf")
    assert conf.exists() and node.path("/etc/corosync/authkey").exists()
    assert not node.path(node.plan["staged_corosync_conf"]).exists()


def assert_secret_kept_out(node: Node) -> None:
    for run in node.runs:
        assert PASSWORD not in run.output
    for call in node.calls():
        assert not any(PASSWORD in arg for arg in call["argv"])
        if call["argv"][:3] == ["pcs", "host", "auth"]:
            assert call["stdin"] == PASSWORD + "\n"
        else:
            assert call["stdin"] == ""


# --- the initiator ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("release", ["bullseye", "bookworm", "trixie"])
def test_initiator_first_boot_runs_the_steps_in_order(node, release):
    data = example_data()
    data["base"]["release"] = release
    p = node.install(make_plan(data, "dns-pm01"))
    node.debian_default_cluster()

    rc, run = node.run()

    assert rc == 0, run.output
    assert node.argvs() == initiator_sequence(p, node.cib_file)
    node.assert_formed_and_done()
    assert "overwrote and deleted the plaintext hacluster password" in run.output
    assert run.output.splitlines()[-1].startswith(f"cluster {p['cluster']} is formed")


def test_the_plaintext_is_overwritten_in_place_before_it_is_unlinked(node):
    """A hard link to the password file sees the same inode: after the run it holds only NUL bytes, so the blocks
    the card frees no longer carry the password."""
    p = node.install(make_plan(example_data(), "dns-pm01"))
    secret = node.path(p["password_file"])
    link = node.tmp / "secret-link"
    os.link(secret, link)

    rc, run = node.run()

    assert rc == 0, run.output
    assert not secret.exists()
    assert link.read_bytes() == b"\0" * len(PASSWORD + "\n")


# The shape the image's pcs makes of the example's plan (builder/cib.py), trimmed to what the merge must handle.
BUILT_CONFIGURATION = """<cib validate-with="pacemaker-3.9" epoch="12"><configuration>
<crm_config><cluster_property_set id="cib-bootstrap-options">
<nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="false"/>
<nvpair id="cib-bootstrap-options-no-quorum-policy" name="no-quorum-policy" value="ignore"/>
</cluster_property_set></crm_config>
<nodes/>
<resources>
<clone id="named-monitor-clone"><primitive id="named-monitor" class="ocf" provider="pibuild" type="named2"/></clone>
<primitive id="rs-vip-1" class="ocf" provider="pibuild" type="vip"/>
<primitive id="rs-vip-2" class="ocf" provider="pibuild" type="vip"/>
</resources>
<constraints><rsc_colocation id="colocation-rs-vip-1" rsc="rs-vip-1" with-rsc="named-monitor-clone" score="INFINITY"/>
</constraints>
<rsc_defaults><meta_attributes id="build-resource-defaults">
<nvpair id="build-resource-defaults-migration-threshold" name="migration-threshold" value="1"/>
</meta_attributes></rsc_defaults>
</configuration><status/></cib>"""


def test_initiator_pushes_the_configuration_built_into_the_image(node):
    """With /etc/pibuild/cib-configuration.xml (made at build time) no `pcs -f` runs on the Pi: one cibadmin
    --replace of the live configuration, which keeps what Pacemaker wrote itself (nodes, cluster-name)."""
    import xml.etree.ElementTree as ET
    p = node.install(make_plan(example_data(), "dns-pm01"))
    node.debian_default_cluster()
    node.write("/etc/pibuild/cib-configuration.xml", BUILT_CONFIGURATION)

    rc, run = node.run()

    assert rc == 0, run.output
    argvs = node.argvs()
    assert not [a for a in argvs if a[:2] == ["pcs", "-f"] or a[:3] in (["pcs", "cluster", "cib"],
                                                                         ["pcs", "cluster", "cib-push"])]
    assert [a for a in argvs if "--replace" in a] == [
        ["cibadmin", "--replace", "--scope", "configuration", "--xml-file", node.cib_file]]
    assert argvs.index(p["commands"]["setup"]) < argvs.index(["cibadmin", "--query", "--scope", "configuration"])
    node.assert_formed_and_done()
    pushed = ET.parse(node.fake_dir / "pushed.xml").getroot()
    assert pushed.tag == "configuration"
    assert [n.get("uname") for n in pushed.iter("node")] == ["dns-pm01"]
    props = {nv.get("name"): nv.get("value") for nv in pushed.iterfind("crm_config/cluster_property_set/nvpair")}
    assert props == {"cluster-name": "clst-01", "stonith-enabled": "false", "no-quorum-policy": "ignore"}
    assert [c.get("id") for c in pushed.find("resources")] == ["named-monitor-clone", "rs-vip-1", "rs-vip-2"]
    assert pushed.find("constraints/rsc_colocation").get("with-rsc") == "named-monitor-clone"
    assert pushed.find("rsc_defaults/meta_attributes/nvpair").get("name") == "migration-threshold"
    assert len(pushed.findall("resources")) == 1 and len(pushed.findall("constraints")) == 1


def test_password_only_on_stdin_never_in_argv_or_log(node):
    node.install(make_plan(example_data(), "dns-pm01"))
    node.debian_default_cluster()
    node.fail("pcs host auth", times=2)  # failures are logged with the command's output: still no password

    rc, run = node.run()

    assert rc == 0, run.output
    auths = [c for c in node.calls() if c["argv"][:3] == ["pcs", "host", "auth"]]
    assert len(auths) == 3  # two failed, then the first formation's one
    assert_secret_kept_out(node)


def test_a_slow_pcsd_is_waited_for_longer_on_each_retry(node):
    """pcsd answering in 200 s (a slow, loaded or emulated node): pcs's 60 s request timeout fails, twice; the
    third pass waits 240 s and the cluster forms. A fixed timeout would fail the same way forever."""
    p = node.install(make_plan(example_data(), "dns-pm01"))
    node.set_state(pcsd_answer_s=200)

    rc, run = node.run()

    assert rc == 0, run.output
    node.assert_formed_and_done()
    timeouts = [c["argv"][-1] for c in node.calls() if c["argv"][:3] == ["pcs", "host", "auth"]]
    assert timeouts == ["--request-timeout=60", "--request-timeout=120", "--request-timeout=240"]
    assert [c["rc"] for c in node.calls() if c["argv"][:3] == ["pcs", "host", "auth"]] == [1, 1, 0]
    assert run.output.count("Operation timed out after") == 2
    assert "requests to other nodes now wait up to 240 s" in run.output
    assert remote(p["commands"]["auth"], 240) in node.argvs()


def test_the_request_timeout_stops_growing_at_its_cap(node):
    node.install(make_plan(example_data(), "dns-pm01"))
    node.set_state(pcsd_answer_s=10_000)

    rc, run = node.run(max_attempts=6)

    assert rc == 1
    timeouts = [c["argv"][-1] for c in node.calls() if c["argv"][:3] == ["pcs", "host", "auth"]]
    assert timeouts == [f"--request-timeout={t}" for t in (60, 120, 240, 480, 480, 480)]


def test_no_pcsd_is_asked_anything_but_authentication(node):
    """The one remote call authenticates: setup is local, the key comes with the image, each node starts its own
    services."""
    p = node.install(make_plan(example_data(), "dns-pm01"))

    rc, run = node.run()

    assert rc == 0, run.output
    remote_calls = [a for a in node.argvs() if any(arg.startswith("--request-timeout=") for arg in a)]
    assert remote_calls == [remote(p["commands"]["auth"])]
    assert not [a for a in node.argvs() if a[:2] == ["pcs", "cluster"] and a[2] in ("start", "enable", "destroy",
                                                                                    "authkey", "sync")]
    node.assert_formed_and_done()


def test_corosync_and_pacemaker_start_without_the_sysv_hook(node):
    """`systemctl enable --now corosync pacemaker` runs with SYSTEMCTL_SKIP_SYSV=1: Debian's update-rc.d hook makes
    /etc/rc?.d links that systemd never reads, and took most of the start's 41 s on an emulated node. Only there."""
    node.install(make_plan(example_data(), "dns-pm01"))
    node.debian_default_cluster()

    rc, run = node.run()

    assert rc == 0, run.output
    start = node.plan["commands"]["start"]
    assert [c["skip_sysv"] for c in node.calls() if c["argv"] == start] == ["1"]
    assert {c["skip_sysv"] for c in node.calls() if c["argv"] != start} == {None}


# In the order of a first boot ("cibadmin" and "crm_mon": their first call, the membership poll).
STEPS = ["systemctl start pcsd", "pcs cluster destroy", "pcs cluster setup", "systemctl enable --now", "cibadmin",
         "crm_mon", "pcs host auth", "pcs cluster cib ", "pcs -f", "pcs cluster cib-push", "cibadmin --query --no-",
         "cibadmin --modify"]


@pytest.mark.parametrize("step", STEPS)
def test_initiator_retries_a_failed_step(node, step):
    node.install(make_plan(example_data(), "dns-pm01"))
    node.debian_default_cluster()
    node.fail(step, "exit")

    rc, run = node.run()

    assert rc == 0, run.output
    assert node.state()["fail"]["times"] == 0, "the failure was never injected"
    node.assert_formed_and_done()
    assert_one_setup_one_push(node)
    assert_secret_kept_out(node)
    if step not in ("cibadmin", "crm_mon"):  # those two are polled: a failure there is just "not ready yet"
        assert "retrying in" in run.output


@pytest.mark.parametrize("step", STEPS)
def test_initiator_rerun_after_a_power_cut_at_each_step(node, step):
    node.install(make_plan(example_data(), "dns-pm01"))
    node.debian_default_cluster()
    node.fail(step, "kill")

    rc, first = node.run()
    assert rc == -9, first.output
    assert not node.path(node.plan["done_file"]).exists()
    before = len(node.calls())

    rc, second = node.run()

    assert rc == 0, second.output
    node.assert_formed_and_done()
    assert_one_setup_one_push(node)
    assert_secret_kept_out(node)
    rerun = [c["argv"] for c in node.calls()[before:]]
    if STEPS.index(step) >= STEPS.index("pcs cluster setup"):
        assert node.plan["commands"]["destroy"] not in rerun
    if STEPS.index(step) > STEPS.index("pcs cluster setup"):  # corosync.conf was in place: kept, not made again
        assert node.plan["commands"]["setup"] not in rerun
    if step == "pcs cluster cib-push":  # cut between the push and its mark: marked, not pushed again
        assert MARK in rerun and not [a for a in rerun if a[:3] == ["pcs", "cluster", "cib-push"]]
    if step == "cibadmin --modify":  # cut after everything: the rerun only sees it formed
        assert rerun == [["systemctl", "start", "pcsd"], QUERY, CRM_MON, EPOCH_QUERY]


def test_rerun_after_the_cluster_formed_only_marks_done(node):
    """A power cut after the secret was deleted but before the done mark: no password needed, nothing redone."""
    node.install(make_plan(example_data(), "dns-pm01"))
    node.formed_cluster()
    node.path(node.plan["password_file"]).unlink()
    node.write(node.plan["state_dir"] + "/firstboot-cib.xml", "<cib/>")  # left by a cut during the push

    rc, run = node.run()

    assert rc == 0, run.output
    assert node.argvs() == [["systemctl", "start", "pcsd"], QUERY, CRM_MON, EPOCH_QUERY]
    node.assert_formed_and_done()


def test_existing_cluster_is_kept_and_only_configured(node):
    """A rerun finding this plan's cluster set up but not configured: no destroy, no setup; enable, start, push."""
    p = node.install(make_plan(example_data(), "dns-pm01"))
    node.formed_cluster(running=False, resources=[])

    rc, run = node.run()

    assert rc == 0, run.output
    argvs = node.argvs()
    assert p["commands"]["destroy"] not in argvs
    assert p["commands"]["setup"] not in argvs
    # The first query finds pacemaker stopped: not formed, so on with the pass: this node starts, sees every node,
    # authenticates them and configures the cluster.
    assert argvs[:7] == [["systemctl", "start", "pcsd"], QUERY, p["commands"]["start"], QUERY, CRM_MON, QUERY,
                         remote(p["commands"]["auth"])]
    assert "keeping it" in run.output
    node.assert_formed_and_done()


def test_hand_edited_cib_is_not_touched(node):
    p = node.install(make_plan(example_data(), "dns-pm01"))
    node.formed_cluster(resources=p["resources"][:1])

    rc, run = node.run(max_attempts=1)

    assert rc == 1
    assert "changed by hand" in run.output
    assert not any(a[:2] == ["pcs", "-f"] or a[:3] == ["pcs", "cluster", "cib-push"] for a in node.argvs())
    assert node.path(p["password_file"]).exists()
    assert not node.path(p["done_file"]).exists()


@pytest.mark.parametrize("leftover, destroyed", [("cib", True), ("nothing", False)])
def test_without_corosync_conf_destroys_only_leftovers(node, leftover, destroyed):
    p = node.install(make_plan(example_data(), "dns-pm01"))
    if leftover == "cib":
        node.write("/var/lib/pacemaker/cib/cib.xml", "<cib/>")

    rc, run = node.run()

    assert rc == 0, run.output
    assert (p["commands"]["destroy"] in node.argvs()) is destroyed
    node.assert_formed_and_done()


def test_late_peers_are_waited_for_with_one_line_each(node):
    p = node.install(make_plan(three_node_data(), "dns-pm01"), peers_up=False)
    node.debian_default_cluster()
    run = node.start()

    run.wait_for("waiting for dns-pm02 (127.0.0.2)")
    run.wait_for("waiting for dns-pm03 (127.0.0.3)")
    time.sleep(0.3)  # several polls while both are down
    assert p["commands"]["auth"] not in node.argvs()
    node.pcsd["dns-pm02"].up()
    run.wait_for("dns-pm02 (127.0.0.2): pcsd answers")
    time.sleep(0.3)
    assert p["commands"]["auth"] not in node.argvs()
    node.pcsd["dns-pm03"].up()

    assert run.finish() == 0, run.output
    assert node.argvs() == initiator_sequence(p, node.cib_file)
    waiting = [line for line in run.lines if line.startswith("waiting for dns-pm0")]
    assert waiting == [f"waiting for dns-pm02 (127.0.0.2): its pcsd does not answer on TCP {p['pcsd_port']} yet",
                       f"waiting for dns-pm03 (127.0.0.3): its pcsd does not answer on TCP {p['pcsd_port']} yet"]
    node.assert_formed_and_done()


def test_waits_for_the_local_pcsd(node):
    node.install(make_plan(example_data(), "dns-pm01"), local_up=False)
    node.debian_default_cluster()
    run = node.start()

    run.wait_for("waiting for the local pcsd")
    assert node.argvs() == [["systemctl", "start", "pcsd"]]
    node.pcsd["local"].up()

    assert run.finish() == 0, run.output
    node.assert_formed_and_done()


def test_a_node_that_stays_offline_keeps_the_initiator_waiting(node):
    node.install(make_plan(example_data(), "dns-pm01"))
    node.debian_default_cluster()
    node.set_state(offline=["dns-pm02"])
    run = node.start()

    line = run.wait_for("waiting for dns-pm02 to come online")
    # Its pcsd answers: the line says why it may stay out.
    assert "dns-pm02 answers on pcsd but is not in this node's cluster" in line
    time.sleep(0.2)
    assert not node.path(node.plan["done_file"]).exists()
    # Nothing is authenticated or pushed before every node is online here.
    assert not [a for a in node.argvs() if a[:3] == ["pcs", "host", "auth"] or a[:1] == ["cibadmin"] and "--query"
                not in a or a[:2] == ["pcs", "cluster"] and a[2] in ("cib", "cib-push")]
    node.set_state(offline=[])

    assert run.finish() == 0, run.output
    assert sum("to come online" in line for line in run.lines) == 1
    node.assert_formed_and_done()


# --- the other nodes -------------------------------------------------------------------------------------------------

def test_member_first_boot_makes_its_own_cluster_files_and_waits_for_the_configuration(node):
    p = node.install(make_plan(example_data(), "dns-pm02"))
    assert not p["is_initiator"]
    node.debian_default_cluster()
    node.set_state(offline=["dns-pm01"])
    run = node.start()

    run.wait_for("waiting for dns-pm01 to come online")
    assert node.argvs() == member_sequence(p)
    node.set_state(offline=[])
    run.wait_for(f"waiting for resources {', '.join(p['resources'])} to appear")
    node.set_state(resources=p["resources"], admin_epoch=1)  # the initiator configured the cluster

    assert run.finish() == 0, run.output
    argvs = node.argvs()
    assert argvs.count(p["commands"]["destroy"]) == 1 and argvs.count(p["commands"]["setup"]) == 1
    assert argvs.count(p["commands"]["start"]) == 1
    assert {a[0] for a in argvs[4:]} == {"cibadmin", "crm_mon"}, "then only watches"
    assert not [a for a in argvs if a[:3] == ["pcs", "host", "auth"]], "a member needs no password"
    node.assert_formed_and_done()
    assert "is formed" in run.lines[-1]


def test_member_never_destroys_the_cluster_it_made(node):
    """A member rebooting after it made its corosync.conf: keep, start, wait, done."""
    p = node.install(make_plan(three_node_data(), "dns-pm03"))
    node.formed_cluster(running=False)
    node.write(p["password_file"], PASSWORD + "\n", mode=0o600)  # not rendered on members, but deleted where present

    rc, run = node.run()

    assert rc == 0, run.output
    assert node.argvs() == [["systemctl", "start", "pcsd"], QUERY, p["commands"]["start"], QUERY, CRM_MON]
    assert "keeping it" in run.output
    node.assert_formed_and_done()


@pytest.mark.parametrize("step, mode, destroys", [
    ("systemctl start pcsd", "exit", [None]),
    ("systemctl start pcsd", "kill", [None]),
    ("pcs cluster destroy", "exit", ["exit", None]),  # retried: the default cluster is still there
    ("pcs cluster destroy", "kill", ["kill"]),  # cut after it took effect: nothing left to destroy
])
def test_member_rerun_after_a_failure(node, step, mode, destroys):
    p = node.install(make_plan(example_data(), "dns-pm02"))
    node.debian_default_cluster()
    node.fail(step, mode)
    run = node.start()
    if mode == "kill":
        assert run.finish() == -9, run.output
        run = node.start()
    run.wait_for("waiting for resources")
    node.set_state(resources=p["resources"], admin_epoch=1)

    assert run.finish() == 0, run.output
    assert [c["injected"] for c in node.calls() if c["argv"] == p["commands"]["destroy"]] == destroys
    assert node.path(p["done_file"]).exists()


def test_done_node_does_nothing(node):
    p = node.install(make_plan(example_data(), "dns-pm01"))
    node.write(p["done_file"], "done\n")

    rc, run = node.run()

    assert rc == 0
    assert node.calls() == []
    assert "nothing to do" in run.output


# --- partial formation states, reflashed cards, cards of another cluster ---------------------------------------------

PARTIAL_FILES = ["conf without the key", "the key without conf", "a different key", "a staged conf left by a cut"]


@pytest.mark.parametrize("state", PARTIAL_FILES)
@pytest.mark.parametrize("role", ["dns-pm01", "dns-pm02"])
def test_cluster_files_left_half_made_converge(node, role, state):
    """Whatever a cut left of this node's corosync.conf and authkey (and whatever the other node has: each node
    makes its own), the next boot completes them without destroying what is this cluster's."""
    p = node.install(make_plan(example_data(), role))
    if state in ("conf without the key", "a different key"):
        node.our_corosync_conf()
    if state == "the key without conf":
        node.write_bytes("/etc/corosync/authkey", AUTHKEY, 0o400)
    if state == "a different key":  # e.g. one an older pibuild made at formation
        node.write_bytes("/etc/corosync/authkey", b"\1" * 256, 0o400)
    if state == "a staged conf left by a cut":
        node.write(p["staged_corosync_conf"], "garbage from a cut {")
    if not p["is_initiator"]:
        node.peers_run_the_cluster()

    rc, run = node.run()

    assert rc == 0, run.output
    argvs = node.argvs()
    assert p["commands"]["destroy"] not in argvs
    assert (p["commands"]["setup"] in argvs) is (state in ("the key without conf", "a staged conf left by a cut"))
    if state != "the key without conf":
        assert "corosync authkey as /etc/corosync/authkey" in run.output
    assert ("replacing a different key" in run.output) is (state == "a different key")
    assert not node.path(p["staged_corosync_conf"]).exists()
    node.assert_formed_and_done()


@pytest.mark.parametrize("role", ["dns-pm01", "dns-pm02"])
def test_corosync_started_without_pacemaker_converges(node, role):
    """A cut between corosync's start and pacemaker's: the next boot starts both (systemctl starts what is not)."""
    p = node.install(make_plan(example_data(), role))
    node.formed_cluster(running=False, resources=[] if p["is_initiator"] else None, admin_epoch=0)
    node.set_state(corosync=True)
    if not p["is_initiator"]:
        node.peers_run_the_cluster()

    rc, run = node.run()

    assert rc == 0, run.output
    assert node.argvs().count(p["commands"]["start"]) == 1
    node.assert_formed_and_done()


def test_configuration_pushed_but_not_marked_is_marked_not_pushed_again(node):
    """A cut between the push and admin_epoch: every resource is there, the next pass marks the CIB only."""
    p = node.install(make_plan(example_data(), "dns-pm01"))
    node.formed_cluster(admin_epoch=0)

    rc, run = node.run()

    assert rc == 0, run.output
    argvs = node.argvs()
    assert not [a for a in argvs if a[:3] in (["pcs", "cluster", "cib"], ["pcs", "cluster", "cib-push"])]
    assert argvs.count(MARK) == 1
    assert remote(p["commands"]["auth"]) in argvs  # the password is still on the card: tokens renewed
    node.assert_formed_and_done()


@pytest.mark.parametrize("role", ["dns-pm01", "dns-pm02", "dns-pm03"])
def test_a_reflashed_node_rejoins_by_itself(node, role):
    """The card of a formed cluster's node flashed again with its image: its peers run the cluster. It makes its
    files, starts, and Pacemaker gives it the cluster's CIB: no setup of the cluster, no push, no mark; only the
    first node authenticates (its card carries the password again), renewing the tokens its new pcsd lacks."""
    p = node.install(make_plan(three_node_data(), role))
    node.debian_default_cluster()
    node.peers_run_the_cluster()

    rc, run = node.run()

    assert rc == 0, run.output
    argvs = node.argvs()
    assert argvs[:4] == member_sequence(p)[:4]  # destroy the package's cluster, make corosync.conf, start
    assert not [a for a in argvs if a[:3] in (["pcs", "cluster", "cib"], ["pcs", "cluster", "cib-push"])
                or a[:2] in (["cibadmin", "--replace"], ["cibadmin", "--modify"])]
    auths = [a for a in argvs if a[:3] == ["pcs", "host", "auth"]]
    assert auths == ([remote(p["commands"]["auth"])] if p["is_initiator"] else [])
    node.assert_formed_and_done()
    assert_secret_kept_out(node)


@pytest.mark.parametrize("role", ["dns-pm01", "dns-pm02"])
def test_a_card_of_another_cluster_waits_and_touches_nothing(node, role):
    """A card built for another cluster.name or node list carries another corosync key: this cluster's nodes never
    let it in. It says so and waits; it asks no other node anything and configures nothing."""
    p = node.install(make_plan(example_data(), role))
    node.debian_default_cluster()
    node.peers_run_the_cluster(key=b"\2" * 256)
    run = node.start()

    line = run.wait_for("to come online in cluster clst-01")
    peer = "dns-pm02" if p["is_initiator"] else "dns-pm01"
    assert f"{peer} answers on pcsd but is not in this node's cluster" in line
    assert "another cluster.name, node list or corosync secret never joins this one" in line
    time.sleep(0.3)  # several more polls

    argvs = node.argvs()
    assert not [a for a in argvs if any(arg.startswith("--request-timeout=") for arg in a)], "asked another node"
    assert not [a for a in argvs if a[:2] == ["pcs", "cluster"] and a[2] in ("cib-push", "authkey", "sync")
                or a[:2] in (["cibadmin", "--replace"], ["cibadmin", "--modify"])]
    assert node.state()["resources"] == []
    assert node.path(p["password_file"]).exists() is p["is_initiator"]
    assert not node.path(p["done_file"]).exists()
    assert run.proc.poll() is None, "it waits"
    assert sum("to come online" in line for line in run.lines) == 1, "one line, not one per poll"


def test_an_image_without_the_corosync_authkey_says_what_to_do(node):
    p = node.install(make_plan(example_data(), "dns-pm02"))
    node.path(p["shipped_authkey"]).unlink()

    rc, run = node.run(max_attempts=1)

    assert rc == 1
    assert f"{p['shipped_authkey']} is missing" in run.output and "pibuild node dns-pm02" in run.output
    assert p["commands"]["start"] not in node.argvs()


# --- the unit --------------------------------------------------------------------------------------------------------

def test_unit_runs_the_script_until_done():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(UNIT.read_text())
    assert unit["Service"]["Type"] == "simple"
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["ExecStart"] == "/" + render.FIRSTBOOT_FILES["pibuild-firstboot"][0]
    assert unit["Unit"]["ConditionPathExists"] == f"!{plan.DONE_PATH}"
    assert set(unit["Unit"]["After"].split()) >= {"network-online.target", "pcsd.service"}
    assert "network-online.target" in unit["Unit"]["Wants"].split()
    # render.py enables the unit through a multi-user.target.wants symlink.
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "multi-user.target.wants" in render.FIRSTBOOT_ENABLE_LINK


def test_script_is_an_executable_stdlib_python3_script():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().splitlines()[0] == "#!/usr/bin/python3"
    mode = subprocess.run(["git", "-C", str(REPO), "ls-files", "-s", str(SCRIPT)], capture_output=True, text=True,
                          check=False).stdout.split()
    if mode:  # tracked: git must keep it executable
        assert mode[0] == "100755"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # Pointed at the checkout's script: verify insists that ExecStart exists.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/lib/pibuild/pibuild-firstboot", f"ExecStart={SCRIPT}"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # unknown keys are only warnings
