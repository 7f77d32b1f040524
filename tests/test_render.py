"""`pibuild render`: the files each node's image receives, for every release, checked by real parsers and tools.

The example cluster is rendered for both nodes and each of bullseye, bookworm and trixie through the command line (a
subprocess, as a user runs it); variations of the config go through builder.config.from_dict and builder.render.
named-checkconf (bind9-utils) checks the BIND options, configparser the NetworkManager keyfile, systemd-analyze the
unit.
"""

import configparser
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import run_pibuild as pibuild

from builder import config, plan, releases, render, secrets

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cluster.yaml"
SEED = REPO / "examples" / "seed.yaml"  # the example with the seed's exact settings
RELEASES = ["bullseye", "bookworm", "trixie"]
NODES = {"dns-pm01": "192.168.100.1", "dns-pm02": "192.168.100.2"}

HOSTNAME = "etc/hostname"
HOSTS = "etc/hosts"
NAMED_OPTIONS = "etc/bind/named.conf.options"
NM_KEYFILE = "etc/NetworkManager/system-connections/pibuild-static.nmconnection"
DHCPCD = "etc/dhcpcd.conf"
CLOUD_INIT = "etc/cloud/cloud.cfg.d/99-pibuild.cfg"
NAMED2 = "usr/lib/ocf/resource.d/pibuild/named2"
FIRSTBOOT_SCRIPT = "usr/lib/pibuild/pibuild-firstboot"
FIRSTBOOT_UNIT = "etc/systemd/system/pibuild-firstboot.service"
FIRSTBOOT_LINK = "etc/systemd/system/multi-user.target.wants/pibuild-firstboot.service"
FIRSTBOOT_JSON = "etc/pibuild/firstboot.json"
SECRET = "etc/pibuild/hacluster-password"
AUTHKEY = "etc/pibuild/corosync-authkey"
PCSD_DEFAULTS = "etc/default/pcsd"

# `pcs cluster destroy` asks for confirmation from pcs 0.11 on: --force there, --yes from 0.12.
DESTROY_CONFIRM = {"bullseye": [], "bookworm": ["--force"], "trixie": ["--yes"]}

# `resource create … --group G` up to pcs 0.11; 0.12's `group G` keyword (0.11.5 reads `group` as an operation).
GROUP_WORD = {"bullseye": "--group", "bookworm": "--group", "trixie": "group"}


def seed_cib(release: str) -> list[list[str]]:
    """The seed's steps 7, 9 and 10 for the example, as `pcs -f CIB …` arguments (the monitor goes first in each
    group, so the floating address comes up only where BIND answers)."""
    group = GROUP_WORD[release]
    return [[group if word == "group" else word for word in command] for command in SEED_CIB]


SEED_CIB = [
    ["property", "set", "stonith-enabled=false", "no-quorum-policy=ignore"],
    ["resource", "defaults", "update", "migration-threshold=1"],
    ["resource", "create", "monitor-named1", "ocf:pibuild:named2", "monitor_request=localhost", "named_user=bind",
     "named=/usr/sbin/named", "op", "monitor", "interval=10s", "timeout=20s", "group", "rg-01"],
    ["resource", "create", "rs-vip-1", "ocf:heartbeat:IPaddr2", "ip=192.168.100.11", "cidr_netmask=24", "nic=eth0",
     "op", "monitor", "interval=10s", "group", "rg-01"],
    ["resource", "create", "monitor-named2", "ocf:pibuild:named2", "monitor_request=localhost", "named_user=bind",
     "named=/usr/sbin/named", "op", "monitor", "interval=10s", "timeout=20s", "group", "rg-02"],
    ["resource", "create", "rs-vip-2", "ocf:heartbeat:IPaddr2", "ip=192.168.100.12", "cidr_netmask=24", "nic=eth0",
     "op", "monitor", "interval=10s", "group", "rg-02"],
    ["constraint", "location", "rs-vip-1", "prefers", "dns-pm01=200", "dns-pm02=100"],
    ["constraint", "location", "rs-vip-2", "prefers", "dns-pm02=200", "dns-pm01=100"],
]


# pibuild's defaults for the example: one cloned named2 monitor every 2 s, each address colocated with it.
CLONE_CIB = [
    ["property", "set", "stonith-enabled=false", "no-quorum-policy=ignore"],
    ["resource", "defaults", "update", "migration-threshold=1"],
    ["resource", "create", "named-monitor", "ocf:pibuild:named2", "monitor_request=localhost", "named_user=bind",
     "named=/usr/sbin/named", "query_timeout=3", "op", "monitor", "interval=2s", "timeout=20s", "clone"],
    ["resource", "create", "rs-vip-1", "ocf:pibuild:vip", "ip=192.168.100.11", "cidr_netmask=24", "nic=eth0",
     "op", "monitor", "interval=10s", "meta", "allow-migrate=true"],
    ["constraint", "colocation", "add", "rs-vip-1", "with", "named-monitor-clone", "100000"],
    ["constraint", "order", "start", "named-monitor-clone", "then", "start", "rs-vip-1", "kind=Optional"],
    ["resource", "create", "rs-vip-2", "ocf:pibuild:vip", "ip=192.168.100.12", "cidr_netmask=24", "nic=eth0",
     "op", "monitor", "interval=10s", "meta", "allow-migrate=true"],
    ["constraint", "colocation", "add", "rs-vip-2", "with", "named-monitor-clone", "100000"],
    ["constraint", "order", "start", "named-monitor-clone", "then", "start", "rs-vip-2", "kind=Optional"],
    ["constraint", "location", "rs-vip-1", "prefers", "dns-pm01=200", "dns-pm02=100"],
    ["constraint", "location", "rs-vip-2", "prefers", "dns-pm02=200", "dns-pm01=100"],
]


def example_data(release: str = "bookworm", source: Path = EXAMPLE) -> dict:
    data = yaml.safe_load(source.read_text())
    data["base"]["release"] = release
    return data




def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@dataclass
class Rendered:
    release: str
    dir: Path
    config: Path
    trees: dict[str, Path]
    password: str
    secret_mode: int
    stdout: dict[str, str]


@pytest.fixture(scope="module", params=RELEASES)
def rendered(request, tmp_path_factory) -> Rendered:
    """The example with base.release changed, rendered for both nodes by `pibuild -c FILE render NODE -o DIR`."""
    release = request.param
    d = tmp_path_factory.mktemp(release)
    cfg = d / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(example_data(release), sort_keys=False))
    secret = d / "secrets" / "hacluster"
    assert not secret.exists()
    trees, stdout = {}, {}
    for node in NODES:
        proc = pibuild("-c", cfg, "render", node, "-o", d / node, cwd=d)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"using {cfg}" in proc.stderr
        trees[node] = d / node
        stdout[node] = proc.stdout
    return Rendered(release, d, cfg, trees, secret.read_text().strip(), mode(secret), stdout)


def render_tree(data: dict, dest: Path, node: str = "dns-pm01", password: str = "s3cret-pw") -> Path:
    """Render through the API (no CLI): from_dict, render_node, write_tree."""
    cluster = config.from_dict(data, dest / "cluster.yaml")
    tree = dest / node
    render.write_tree(render.render_node(cluster, node, password), tree)
    return tree


# --- what each node receives -------------------------------------------------------------------------------------

def test_the_files_each_node_receives(rendered):
    for node, tree in rendered.trees.items():
        files = tree_files(tree)
        expected = {HOSTNAME, HOSTS, NAMED_OPTIONS, NAMED2, FIRSTBOOT_SCRIPT, FIRSTBOOT_UNIT, FIRSTBOOT_LINK,
                    FIRSTBOOT_JSON}
        assert expected <= files, expected - files
        # the network backend of the release, and only it
        if rendered.release == "bullseye":
            assert DHCPCD in files and NM_KEYFILE not in files
        else:
            assert NM_KEYFILE in files and DHCPCD not in files
        assert (CLOUD_INIT in files) == (rendered.release == "trixie")
        assert (SECRET in files) == (node == "dns-pm01")
        assert AUTHKEY in files
        assert not any(f.endswith(".j2") for f in files)
        # the listing on stdout names every file written
        for f in files:
            assert f"/{f} " in rendered.stdout[node]


def test_modes(rendered):
    private = {NM_KEYFILE, SECRET}
    executable = {NAMED2, FIRSTBOOT_SCRIPT, "usr/lib/pibuild/named-stopped", "usr/lib/pibuild/named-handoff",
                  "usr/lib/ocf/resource.d/pibuild/vip"}
    for tree in rendered.trees.values():
        for f in tree_files(tree):
            path = tree / f
            if path.is_symlink():
                continue
            want = 0o400 if f == AUTHKEY else 0o600 if f in private else 0o755 if f in executable else 0o644
            assert mode(path) == want, f"{f}: {mode(path):04o}, want {want:04o}"


def test_hostname(rendered):
    for node, tree in rendered.trees.items():
        assert (tree / HOSTNAME).read_text() == f"{node}\n"


def test_hosts(rendered):
    for node, tree in rendered.trees.items():
        lines = (tree / HOSTS).read_text().splitlines()
        assert "127.0.0.1\tlocalhost" in lines
        assert f"127.0.1.1\t{node}" in lines
        i = lines.index("# Pacemaker Settings")
        assert lines[i + 1:i + 3] == ["192.168.100.1\tdns-pm01", "192.168.100.2\tdns-pm02"]
        # Every entry is an address and names, as the resolver reads them.
        names: dict[str, list[str]] = {}
        for line in lines:
            fields = line.split("#")[0].split()
            if fields:
                ipaddress.ip_address(fields[0])
                assert len(fields) >= 2, line
                for name in fields[1:]:
                    names.setdefault(name, []).append(fields[0])
        assert names["dns-pm01"] == (["127.0.1.1", "192.168.100.1"] if node == "dns-pm01" else ["192.168.100.1"])
        assert names["dns-pm02"] == (["127.0.1.1", "192.168.100.2"] if node == "dns-pm02" else ["192.168.100.2"])


def test_network_configuration(rendered):
    for node, tree in rendered.trees.items():
        if rendered.release == "bullseye":
            lines = [line.strip() for line in (tree / DHCPCD).read_text().splitlines()]
            i = lines.index("interface eth0")
            block = lines[i + 1:]
            assert f"static ip_address={NODES[node]}/24" in block
            assert "static routers=192.168.100.254" in block
            assert "static domain_name_servers=127.0.0.1" in block
            assert not (tree / "etc" / "NetworkManager").exists()
        else:
            keyfile = configparser.ConfigParser(interpolation=None, strict=True)
            keyfile.read_string((tree / NM_KEYFILE).read_text())
            assert keyfile["connection"]["type"] == "ethernet"
            assert keyfile["connection"]["interface-name"] == "eth0"
            assert keyfile["connection"]["autoconnect"] == "true"
            assert keyfile["ipv4"]["method"] == "manual"
            assert keyfile["ipv4"]["address1"] == f"{NODES[node]}/24,192.168.100.254"
            assert keyfile["ipv4"]["dns"] == "127.0.0.1;"
            # NetworkManager ignores a keyfile that others can read
            assert mode(tree / NM_KEYFILE) == 0o600
            assert not (tree / DHCPCD).exists()


def test_cloud_init_keeps_its_hands_off_on_trixie_only(rendered):
    for tree in rendered.trees.values():
        path = tree / CLOUD_INIT
        if rendered.release != "trixie":
            assert not path.exists()
            assert not (tree / "etc" / "cloud").exists()
            continue
        drop_in = yaml.safe_load(path.read_text())
        assert drop_in["preserve_hostname"] is True
        assert drop_in["manage_etc_hosts"] is False
        assert drop_in["network"] == {"config": "disabled"}
        assert mode(path) == 0o644


# --- BIND ------------------------------------------------------------------------------------------------------

def parse_named_conf(text: str) -> list:
    """named.conf as nested statements: each a list of words, with a block as a nested list of statements."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', text)

    def block(i: int) -> tuple[list, int]:
        statements, current = [], []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == "{":
                inner, i = block(i)
                current.append(inner)
            elif token == "}":
                return statements, i
            elif token == ";":
                if current:
                    statements.append(current)
                current = []
            else:
                current.append(token.strip('"'))
        return statements, i

    return block(0)[0]


def statement(statements: list, *words: str) -> list:
    (found,) = [s for s in statements if s[:len(words)] == list(words)]
    return found


def members(statements: list, *words: str) -> list[str]:
    """The elements of an address-match list such as `forwarders { a; b; };`."""
    return [" ".join(s) for s in statement(statements, *words)[-1]]


def checked_named_conf(options: Path, tmp_path: Path) -> list:
    """named-checkconf on a named.conf that includes the rendered options; returns its canonical form, parsed."""
    if not shutil.which("named-checkconf"):
        pytest.skip("named-checkconf is not installed (apt-get install bind9-utils)")
    wrapper = tmp_path / "named.conf"
    wrapper.write_text(f'include "{options.resolve()}";\n')
    check = subprocess.run(["named-checkconf", str(wrapper)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    printed = subprocess.run(["named-checkconf", "-p", str(wrapper)], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    return parse_named_conf(printed.stdout)


def test_bind_options_pass_named_checkconf(rendered, tmp_path):
    for tree in rendered.trees.values():
        conf = checked_named_conf(tree / NAMED_OPTIONS, tmp_path)
        # Recursion only for dns.allow_recursion (and the node itself): never an open resolver.
        assert members(conf, "acl", "pibuild-recursion") == ["localhost", "192.168.100.0/24"]
        options = statement(conf, "options")[-1]
        assert statement(options, "recursion") == ["recursion", "yes"]
        assert members(options, "allow-recursion") == ["pibuild-recursion"]
        assert members(options, "allow-query-cache") == ["pibuild-recursion"]
        # Forwarders are network.dns.
        assert members(options, "forwarders") == ["192.168.100.254"]
        # Listening on every address, so a floating address that arrives later is served.
        assert members(options, "listen-on") == ["any"]
        # BIND 9.16 (bullseye) has no automatic-interface-scan: it would refuse to start.
        words = {s[0] for s in options}
        if rendered.release == "bullseye":
            assert "automatic-interface-scan" not in words and "interface-interval" in words
        else:
            assert statement(options, "automatic-interface-scan") == ["automatic-interface-scan", "yes"]


@pytest.mark.parametrize("release", RELEASES)
def test_bind_options_follow_the_config(tmp_path, release):
    data = example_data(release)
    data["network"]["dns"] = ["1.1.1.1", "9.9.9.9"]
    data["dns"]["allow_recursion"] = ["192.168.100.0/24", "10.8.0.0/16", "fd00:53::/64"]
    tree = render_tree(data, tmp_path)
    conf = checked_named_conf(tree / NAMED_OPTIONS, tmp_path)
    assert members(conf, "acl", "pibuild-recursion") == ["localhost", "192.168.100.0/24", "10.8.0.0/16",
                                                         "fd00:53::/64"]
    assert members(statement(conf, "options")[-1], "forwarders") == ["1.1.1.1", "9.9.9.9"]


def test_named_checkconf_catches_a_broken_file(tmp_path):
    """The check above is real: a broken options file fails it."""
    if not shutil.which("named-checkconf"):
        pytest.skip("named-checkconf is not installed")
    bad = tmp_path / "named.conf.options"
    bad.write_text("options { recursion maybe; };\n")
    wrapper = tmp_path / "named.conf"
    wrapper.write_text(f'include "{bad}";\n')
    assert subprocess.run(["named-checkconf", str(wrapper)], capture_output=True).returncode != 0


# --- named2 and firstboot -----------------------------------------------------------------------------------------

def pcsd_environment(path: Path) -> dict[str, str]:
    """The variables pcsd.service gets from its EnvironmentFile (simple KEY=VALUE lines: sh reads them the same)."""
    out = subprocess.run(["sh", "-c", 'set -a; . "$1"; env -0', "sh", str(path)], env={}, capture_output=True,
                         text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def test_pcsd_listens_only_on_the_node_address_and_loopback(rendered):
    vips = {"192.168.100.11", "192.168.100.12"}
    for node, tree in rendered.trees.items():
        env = pcsd_environment(tree / PCSD_DEFAULTS)
        # pcsd's own reading (pcs/daemon/env.py): comma-separated, each stripped; tornado binds each address.
        bound = {a.strip() for a in env["PCSD_BIND_ADDR"].split(",")}
        assert bound == {NODES[node], "127.0.0.1", "127.0.1.1"}, bound
        assert not bound & vips and "::" not in bound and "0.0.0.0" not in bound
        # Debian's other settings stay as the package has them.
        assert env["RACK_ENV"] == "production"
        assert (env["PCSD_DEBUG"], env["PCSD_DISABLE_GUI"], env["PCSD_SESSION_LIFETIME"]) == ("false", "false",
                                                                                              "3600")
        # pcs host auth and firstboot reach a peer's pcsd by the peer's name and address, which this file binds.
        hosts = (tree / HOSTS).read_text()
        assert f"{NODES[node]}\t{node}" in hosts and f"127.0.1.1\t{node}" in hosts
        plan_ = json.loads((tree / FIRSTBOOT_JSON).read_text())
        assert {n["address"] for n in plan_["nodes"]} == set(NODES.values())
    # BIND, unlike pcsd, answers on every address: a VIP arrives after it started.
    options = (rendered.trees["dns-pm01"] / NAMED_OPTIONS).read_text()
    assert re.search(r"listen-on\s*(port 53\s*)?\{\s*any;\s*\}", options), options


def test_named2_agent(rendered):
    source = REPO / "overlays" / "common" / NAMED2
    for tree in rendered.trees.values():
        agent = tree / NAMED2
        assert agent.read_bytes() == source.read_bytes()
        assert mode(agent) == 0o755
        assert agent.read_text().startswith("#!/bin/sh\n")
        syntax = subprocess.run(["sh", "-n", str(agent)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr


def test_firstboot_unit_script_and_enable_link(rendered, tmp_path):
    for tree in rendered.trees.values():
        script, unit, link = tree / FIRSTBOOT_SCRIPT, tree / FIRSTBOOT_UNIT, tree / FIRSTBOOT_LINK
        assert script.read_bytes() == (REPO / "firstboot" / "pibuild-firstboot").read_bytes()
        assert unit.read_bytes() == (REPO / "firstboot" / "pibuild-firstboot.service").read_bytes()
        assert (mode(script), mode(unit)) == (0o755, 0o644)
        compile(script.read_text(), str(script), "exec")  # valid Python for the image's python3
        assert script.read_text().startswith("#!/usr/bin/python3\n")

        assert link.is_symlink()
        assert os.readlink(link) == "/" + FIRSTBOOT_UNIT

        parsed = configparser.ConfigParser(interpolation=None, strict=False)
        parsed.optionxform = str
        parsed.read_string(unit.read_text())
        assert parsed["Service"]["ExecStart"] == "/" + FIRSTBOOT_SCRIPT
        # The enable link is where `systemctl enable` would put it.
        assert Path(FIRSTBOOT_LINK).parent.name == parsed["Install"]["WantedBy"] + ".wants"


def test_firstboot_unit_passes_systemd_analyze_verify(rendered, tmp_path):
    """systemd-analyze verify --root on the rendered tree plus the host's unit files (ExecStart must exist there)."""
    units = Path("/usr/lib/systemd/system")
    if not shutil.which("systemd-analyze") or not (units / "multi-user.target").exists():
        pytest.skip("systemd-analyze or the host's unit files are missing")
    root = tmp_path / "root"
    shutil.copytree(rendered.trees["dns-pm01"], root, symlinks=True)
    shutil.copytree(units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "/" + FIRSTBOOT_UNIT],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert "pibuild-firstboot" not in verify.stderr, verify.stderr


def test_firstboot_plan_forms_the_example_cluster(rendered):
    pcs_version = {"bullseye": "0.10", "bookworm": "0.11", "trixie": "0.12"}[rendered.release]
    for node, tree in rendered.trees.items():
        assert mode(tree / FIRSTBOOT_JSON) == 0o644
        p = json.loads((tree / FIRSTBOOT_JSON).read_text())
        assert p["cluster"] == "clst-01"
        assert p["node"] == node
        assert p["initiator"] == "dns-pm01"
        assert p["is_initiator"] is (node == "dns-pm01")
        assert p["nodes"] == [{"name": n, "address": a} for n, a in NODES.items()]
        assert p["resources"] == ["rs-vip-1", "rs-vip-2", "named-monitor"]
        assert p["pcs_version"].startswith(pcs_version + ".")
        assert p["password_file"] == "/" + SECRET
        commands = p["commands"]
        assert commands["destroy"] == ["pcs", "cluster", "destroy", *DESTROY_CONFIRM[rendered.release]]
        assert commands["auth"] == ["pcs", "host", "auth", "dns-pm01", "dns-pm02", "-u", "hacluster"]
        assert commands["setup"][:8] == ["pcs", "cluster", "setup", "clst-01", "dns-pm01", "addr=192.168.100.1",
                                         "dns-pm02", "addr=192.168.100.2"]
        # Local mode: the live setup's remote destroy, enable and start waited on pcs's fixed 60 s (issue 14).
        assert commands["setup"][-3:] == ["--corosync_conf", p["staged_corosync_conf"], "--overwrite"]
        assert not {"--start", "--enable"} & set(commands["setup"])
        # Every node makes its own corosync.conf: the same command everywhere, and no random cluster UUID where
        # pcs would write one (0.11.5 on; 0.10 has no such option).
        assert ("--no-cluster-uuid" in commands["setup"]) is (rendered.release != "bullseye")
        assert "authkey" not in commands and "sync" not in commands, "no node hands another its cluster files"
        assert p["shipped_authkey"] == "/etc/pibuild/corosync-authkey"
        assert commands["start"] == ["systemctl", "enable", "--now", "corosync.service", "pacemaker.service"]
        assert commands["cib"] == CLONE_CIB


@pytest.mark.parametrize("release", ["bullseye", "bookworm", "trixie"])
def test_layout_group_is_the_seeds_cib(release, tmp_path):
    data = example_data(release, SEED)
    tree = render_tree(data, tmp_path)
    p = json.loads((tree / FIRSTBOOT_JSON).read_text())
    assert p["commands"]["cib"] == seed_cib(release)
    assert p["resources"] == ["rs-vip-1", "rs-vip-2", "monitor-named1", "monitor-named2"]


@pytest.mark.parametrize("release", ["bullseye", "bookworm", "trixie"])
def test_every_cib_command_is_in_the_seed(release, tmp_path):
    """The seed's facts, each found in the cib commands of layout group (independently of their order)."""
    data = example_data(release, SEED)
    p = json.loads((render_tree(data, tmp_path) / FIRSTBOOT_JSON).read_text())
    cib = [" ".join(c) for c in p["commands"]["cib"]]
    for vip, address, group, monitor in (("rs-vip-1", "192.168.100.11", "rg-01", "monitor-named1"),
                                         ("rs-vip-2", "192.168.100.12", "rg-02", "monitor-named2")):
        (create,) = [c for c in cib if c.startswith(f"resource create {vip} ")]
        assert f"ocf:heartbeat:IPaddr2 ip={address} cidr_netmask=24 nic=eth0" in create
        assert create.endswith(f" {GROUP_WORD[release]} {group}")
        (mon,) = [c for c in cib if c.startswith(f"resource create {monitor} ")]
        assert "ocf:pibuild:named2 monitor_request=localhost named_user=bind named=/usr/sbin/named" in mon
        assert "op monitor interval=10s" in mon
        assert mon.endswith(f" {GROUP_WORD[release]} {group}")
    assert "constraint location rs-vip-1 prefers dns-pm01=200 dns-pm02=100" in cib
    assert "constraint location rs-vip-2 prefers dns-pm02=200 dns-pm01=100" in cib
    assert "resource defaults update migration-threshold=1" in cib
    assert "property set stonith-enabled=false no-quorum-policy=ignore" in cib
    assert not any("failure-timeout" in c for c in cib)  # failback: manual, as in the seed


# --- the hacluster password ------------------------------------------------------------------------------------

def test_hacluster_secret_only_on_the_initiator(rendered):
    assert rendered.secret_mode == 0o600  # created 0600 beside the config when missing
    assert len(rendered.password) >= 16 and "\n" not in rendered.password
    initiator = rendered.trees["dns-pm01"] / SECRET
    assert initiator.read_text() == rendered.password + "\n"
    assert mode(initiator) == 0o600
    # `render -o DIR` made DIR: its owner's alone, as every output directory pibuild makes.
    assert {mode(tree) for tree in rendered.trees.values()} == {0o700}
    assert not (rendered.trees["dns-pm02"] / SECRET).exists()
    # The plaintext is nowhere else: not in the plan, not in another file, not on stdout.
    for node, tree in rendered.trees.items():
        for f in tree_files(tree) - {SECRET}:
            path = tree / f
            if not path.is_symlink():
                assert rendered.password.encode() not in path.read_bytes(), f
        assert rendered.password not in rendered.stdout[node]


def test_existing_secret_is_reused(tmp_path):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(example_data(), sort_keys=False))
    secret = tmp_path / "secrets" / "hacluster"
    secret.parent.mkdir()
    secret.write_text("my-own-password\n")
    secret.chmod(0o600)
    proc = pibuild("-c", cfg, "render", "dns-pm01", "-o", tmp_path / "tree", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tree" / SECRET).read_text() == "my-own-password\n"
    assert secret.read_text() == "my-own-password\n"


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604])
def test_secret_readable_by_others_is_refused(tmp_path, bad_mode):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(example_data(), sort_keys=False))
    secret = tmp_path / "secrets" / "hacluster"
    secret.parent.mkdir()
    secret.write_text("leaked-password\n")
    secret.chmod(bad_mode)
    proc = pibuild("-c", cfg, "render", "dns-pm01", "-o", tmp_path / "tree", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"chmod 600 {secret}" in proc.stderr
    assert "secrets.hacluster_password_file" in proc.stderr
    assert not (tmp_path / "tree").exists()
    assert "leaked-password" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("content", ["\n", "two\nlines\n", "tab\tinside\n", "escape\x1b\n"])
def test_empty_or_unprintable_secret_is_refused(tmp_path, content):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(example_data(), sort_keys=False))
    secret = tmp_path / "secrets" / "hacluster"
    secret.parent.mkdir()
    secret.write_text(content)
    secret.chmod(0o600)
    proc = pibuild("-c", cfg, "render", "dns-pm01", "-o", tmp_path / "tree", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert str(secret) in proc.stderr


def test_bundled_example_puts_the_secret_in_the_current_directory(tmp_path):
    proc = pibuild("render", "dns-pm02", "-o", "tree", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using the bundled example" in proc.stderr
    secret = tmp_path / "secrets" / "hacluster"
    assert mode(secret) == 0o600
    assert (tmp_path / "tree" / HOSTNAME).read_text() == "dns-pm02\n"
    assert not (REPO / "examples" / "secrets").exists()


# --- the corosync key -------------------------------------------------------------------------------------------

def test_every_node_carries_the_same_corosync_authkey(rendered):
    """Derived from the 0600 secret beside the config, the cluster's name and its node list: the same bytes on
    every node, 0400, and not the secret itself."""
    secret = rendered.dir / "secrets" / "corosync-key"
    assert mode(secret) == 0o600
    keys = {(tree / AUTHKEY).read_bytes() for tree in rendered.trees.values()}
    assert len(keys) == 1
    (key,) = keys
    assert len(key) == 256
    assert bytes.fromhex(secret.read_text().strip()) not in key
    for node, tree in rendered.trees.items():
        assert key.hex() not in rendered.stdout[node]
        for f in tree_files(tree) - {AUTHKEY}:
            if not (tree / f).is_symlink():
                assert key not in (tree / f).read_bytes(), f


@pytest.mark.parametrize("change", ["name", "address", "node name", "node order", "secret"])
def test_another_cluster_gets_another_corosync_authkey(tmp_path, change):
    """A card built for another cluster.name or node list, or with another secret, holds a key this cluster's
    corosync never accepts; the same config and secret give the same key (a rebuilt card rejoins)."""
    secret = tmp_path / "corosync-key"
    nodes = [("dns-pm01", "192.168.100.1"), ("dns-pm02", "192.168.100.2")]
    key = secrets.corosync_authkey(secret, "clst-01", nodes)
    assert mode(secret) == 0o600
    assert secrets.corosync_authkey(secret, "clst-01", list(nodes)) == key
    name, other = "clst-01", list(nodes)
    if change == "name":
        name = "clst-02"
    elif change == "address":
        other[1] = ("dns-pm02", "192.168.100.3")
    elif change == "node name":
        other[1] = ("dns-pm03", "192.168.100.2")
    elif change == "node order":
        other.reverse()
    else:
        secret = tmp_path / "another-key"
    assert secrets.corosync_authkey(secret, name, other) != key


@pytest.mark.parametrize("content, bad_mode", [("ab" * 64 + "\n", 0o644), ("not hex\n", 0o600), ("abcd\n", 0o600)])
def test_a_bad_corosync_secret_is_refused(tmp_path, content, bad_mode):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(example_data(), sort_keys=False))
    secret = tmp_path / "secrets" / "corosync-key"
    secret.parent.mkdir()
    secret.write_text(content)
    secret.chmod(bad_mode)
    proc = pibuild("-c", cfg, "render", "dns-pm02", "-o", tmp_path / "tree", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "secrets.corosync_key_file" in proc.stderr and str(secret) in proc.stderr
    assert ("chmod 600" in proc.stderr) is (bad_mode != 0o600)


# --- other config ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("release", RELEASES)
def test_failback_auto_adds_failure_timeout(tmp_path, release):
    data = example_data(release)
    data["pacemaker"]["failback"] = "auto"
    data["pacemaker"]["failure_timeout"] = "2min"
    tree = render_tree(data, tmp_path)
    cib = json.loads((tree / FIRSTBOOT_JSON).read_text())["commands"]["cib"]
    defaults = [c for c in cib if c[:2] == ["resource", "defaults"]]
    assert defaults == [["resource", "defaults", "update", "migration-threshold=1", "failure-timeout=2min"]]
    # Everything else is as without it.
    assert [c for c in cib if c[:2] != ["resource", "defaults"]] == [c for c in CLONE_CIB if c[1] != "defaults"]


def test_render_of_another_cluster(tmp_path):
    """Nothing of the example is hard-wired: three nodes, another subnet, interface, prefix and monitor."""
    data = example_data("trixie")
    data["cluster"]["name"] = "lab-7"
    data["network"].update(interface="end0", prefix=16, gateway="10.20.0.1", dns=["10.20.0.1"])
    data["nodes"] = [{"name": f"ns{i}", "address": f"10.20.1.{i}", "model": "pi4b"} for i in (1, 2, 3)]
    data["vips"] = [{"name": "vip-a", "address": "10.20.2.1", "prefer": ["ns2", "ns1", "ns3"]}]
    data["pacemaker"].update(monitor_interval="5s", monitor_request="example.lan", migration_threshold=2)
    del data["pacemaker"]["no_quorum_policy"]  # three nodes: Pacemaker's stop by default
    data["dns"]["allow_recursion"] = ["10.20.0.0/16"]
    tree = render_tree(data, tmp_path, node="ns3")
    assert (tree / HOSTNAME).read_text() == "ns3\n"
    hosts = (tree / HOSTS).read_text().splitlines()
    i = hosts.index("# Pacemaker Settings")
    assert hosts[i + 1:i + 4] == ["10.20.1.1\tns1", "10.20.1.2\tns2", "10.20.1.3\tns3"]
    keyfile = configparser.ConfigParser(interpolation=None)
    keyfile.read_string((tree / NM_KEYFILE).read_text())
    assert keyfile["connection"]["interface-name"] == "end0"
    assert keyfile["ipv4"]["address1"] == "10.20.1.3/16,10.20.0.1"
    assert not (tree / SECRET).exists()  # ns1 is the initiator
    p = json.loads((tree / FIRSTBOOT_JSON).read_text())
    assert (p["initiator"], p["is_initiator"]) == ("ns1", False)
    cib = p["commands"]["cib"]
    assert ["resource", "defaults", "update", "migration-threshold=2"] in cib
    assert ["constraint", "location", "vip-a", "prefers", "ns2=300", "ns1=200", "ns3=100"] in cib
    (vip,) = [c for c in cib if c[:3] == ["resource", "create", "vip-a"]]
    assert vip[3:7] == ["ocf:pibuild:vip", "ip=10.20.2.1", "cidr_netmask=16", "nic=end0"]
    assert ["constraint", "colocation", "add", "vip-a", "with", "named-monitor-clone", "100000"] in cib
    (mon,) = [c for c in cib if c[:3] == ["resource", "create", "named-monitor"]]
    assert "monitor_request=example.lan" in mon and "interval=5s" in mon and mon[-1] == "clone"
    assert p["commands"]["setup"][3:10] == ["lab-7", "ns1", "addr=10.20.1.1", "ns2", "addr=10.20.1.2", "ns3",
                                            "addr=10.20.1.3"]
    checked_named_conf(tree / NAMED_OPTIONS, tmp_path)


@pytest.mark.parametrize(("extra_nodes", "policy"), [(0, "ignore"), (1, "stop")])
def test_the_plan_sets_no_quorum_policy_by_node_count(tmp_path, extra_nodes, policy):
    """Two nodes keep the seed's ignore (corosync's two_node keeps the survivor quorate anyway); with three, a node
    cut off from the majority must stop its VIPs, which the majority takes over."""
    data = example_data()
    del data["pacemaker"]["no_quorum_policy"]
    data["nodes"] += [{"name": "dns-pm03", "address": "192.168.100.3", "model": "pi3b"}][:extra_nodes]
    for node in [n["name"] for n in data["nodes"]]:
        p = json.loads((render_tree(data, tmp_path, node=node) / FIRSTBOOT_JSON).read_text())
        assert p["commands"]["cib"][0] == ["property", "set", "stonith-enabled=false", f"no-quorum-policy={policy}"]
        assert len(p["nodes"]) == 2 + extra_nodes


def test_render_unknown_node(tmp_path):
    proc = pibuild("render", "dns-pm03", "-o", tmp_path / "tree", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "dns-pm03" in proc.stderr and "dns-pm01" in proc.stderr
    assert not (tmp_path / "tree").exists()


def test_render_refuses_a_bad_config(tmp_path):
    data = example_data()
    data["nodes"][1]["address"] = "192.168.100.1"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = pibuild("-c", cfg, "render", "dns-pm01", "-o", tmp_path / "tree", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nodes[1].address: '192.168.100.1'" in proc.stderr
    assert not (tmp_path / "tree").exists()
    assert not (tmp_path / "secrets").exists()


def test_rerender_over_an_existing_tree(tmp_path):
    data = example_data()
    tree = render_tree(data, tmp_path)
    (tree / HOSTNAME).write_text("stale\n")
    (tree / SECRET).chmod(0o644)
    render_tree(data, tmp_path)
    assert (tree / HOSTNAME).read_text() == "dns-pm01\n"
    assert mode(tree / SECRET) == 0o600
    assert os.readlink(tree / FIRSTBOOT_LINK) == "/" + FIRSTBOOT_UNIT


def test_plan_password_path_matches_render():
    assert plan.PASSWORD_PATH == "/" + SECRET
    assert plan.CONFIG_PATH == "/" + FIRSTBOOT_JSON


def test_bind_stop_hooks_agree(rendered):
    """named.service's drop-in, the handoff unit, named-stopped and the named2 agent name the same files."""
    tree = rendered.trees["dns-pm01"]

    def unit(rel: str) -> configparser.ConfigParser:
        parsed = configparser.ConfigParser(interpolation=None, strict=False)
        parsed.optionxform = str
        parsed.read_string((tree / rel).read_text())
        return parsed

    dropin = unit("etc/systemd/system/named.service.d/pibuild-failover.conf")
    handoff = unit("etc/systemd/system/pibuild-named-handoff.service")
    marker = "/run/pibuild/named-stopped"
    assert dropin["Service"]["ExecStartPre"] == f"-/bin/rm -f {marker}"
    assert dropin["Service"]["ExecStopPost"] == "-/usr/lib/pibuild/named-stopped"
    assert f": >{marker}" in (tree / "usr/lib/pibuild/named-hooks.sh").read_text()
    for hook in ("named-stopped", "named-handoff"):  # both leave the marker, the handoff before anything else
        text = (tree / "usr/lib/pibuild" / hook).read_text()
        steps = [text.index(step) for step in (". /usr/lib/pibuild/named-hooks.sh", "\nmark_bind_stopped\n",
                                                 "\nreaction_wanted || exit 0\n")]
        assert steps == sorted(steps), hook
    assert f'OCF_RESKEY_stop_marker_default="{marker}"' in (tree / NAMED2).read_text()
    # The handoff stops before named (After= reverses for stop jobs) whenever named stops, and starts with it.
    assert dropin["Unit"]["Wants"] == "pibuild-named-handoff.service"
    assert (handoff["Unit"]["After"], handoff["Unit"]["PartOf"]) == ("named.service", "named.service")
    assert handoff["Service"]["ExecStop"] == "-/usr/lib/pibuild/named-handoff"
    assert (tree / "etc/pibuild/floating-addresses").read_text().split() == ["192.168.100.11", "192.168.100.12"]
    assert "/etc/pibuild/floating-addresses" in (tree / "usr/lib/pibuild/named-handoff").read_text()


def test_a_release_whose_bind_has_no_localhost_zone_gets_one_that_loads(rendered, tmp_path):
    """The named2 monitor asks for localhost. Trixie's bind9 ships no named.conf.default-zones (BIND 9.20 alone
    answered SERVFAIL, and the monitor never started in the lab): the node brings the zone, and only there (a second
    localhost zone beside Debian's would stop BIND from starting)."""
    tree = rendered.trees["dns-pm01"]
    local, zone = tree / "etc/bind/named.conf.local", tree / "etc/bind/db.localhost"
    if not releases.RELEASES[rendered.release].bind_localhost_zone:
        assert not local.exists() and not zone.exists()
        return
    if not shutil.which("named-checkconf"):
        pytest.skip("named-checkconf is not installed (apt-get install bind9-utils)")
    conf = tmp_path / "named.conf.local"
    conf.write_text(local.read_text().replace('"/etc/bind/db.localhost"', f'"{zone.resolve()}"'))
    wrapper = tmp_path / "named.conf"
    wrapper.write_text(f'include "{(tree / NAMED_OPTIONS).resolve()}";\ninclude "{conf}";\n')
    # -z loads every zone, as named does at start.
    check = subprocess.run(["named-checkconf", "-z", str(wrapper)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "zone localhost/IN: loaded serial 1" in check.stdout
