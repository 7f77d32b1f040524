"""cluster.yaml: the bundled example is the seed's cluster, and every validation rule rejects a bad config.

Bad configs go through the real command line in a subprocess (`python -m builder.cli -c FILE validate`), so the exit
code, the message and the absence of a traceback are what a user would see.
"""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_pibuild as pibuild

from builder import config, resources, schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "cluster.yaml"
SEED = REPO / "examples" / "seed.yaml"
DELETE = object()


def example_data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())




def edit(data: dict, path: str, value) -> None:
    """Set (or, with DELETE, remove) the value at a key path such as 'nodes[1].name' or 'base.release'."""
    keys: list = []
    for part in path.split("."):
        m = re.fullmatch(r"([^\[]+)((?:\[\d+\])*)", part)
        keys.append(m.group(1))
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    target = data
    for k in keys[:-1]:
        target = target[k]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


def write_config(tmp_path: Path, edits: dict) -> Path:
    data = example_data()
    for path, value in edits.items():
        edit(data, path, value if value is DELETE else copy.deepcopy(value))
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def problem_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.strip()[2:] for line in proc.stderr.splitlines() if line.strip().startswith("- ")]


# --- the bundled example -----------------------------------------------------------------------------------------

def test_bundled_example_is_the_seeds_cluster(tmp_path):
    cluster = config.load(EXAMPLE, base_dir=tmp_path)
    assert cluster.name == "clst-01"
    assert (cluster.base.source, cluster.base.release, cluster.base.arch) == ("debian", "bookworm", "armhf")
    assert [(n.name, n.address, n.model) for n in cluster.nodes] == [
        ("dns-pm01", "192.168.100.1", "pi3b"),
        ("dns-pm02", "192.168.100.2", "pi2b"),
    ]
    assert cluster.initiator.name == "dns-pm01"
    assert cluster.network.interface == "eth0"
    assert cluster.network.prefix == 24
    assert cluster.network.gateway == "192.168.100.254"
    assert cluster.network.dns == ("192.168.100.254",)
    assert str(cluster.subnet) == "192.168.100.0/24"

    vip1, vip2 = cluster.vips
    assert (vip1.name, vip1.address, vip1.group, vip1.monitor) == ("rs-vip-1", "192.168.100.11", "rg-01",
                                                                    "monitor-named1")
    assert vip1.scores() == [("dns-pm01", 200), ("dns-pm02", 100)]
    assert (vip2.name, vip2.address, vip2.group, vip2.monitor) == ("rs-vip-2", "192.168.100.12", "rg-02",
                                                                    "monitor-named2")
    assert vip2.scores() == [("dns-pm02", 200), ("dns-pm01", 100)]

    pm = cluster.pacemaker
    assert pm.migration_threshold == 1
    # pibuild's defaults, not the seed's (examples/seed.yaml has those).
    defaults = {k.path: k.default for k in config.KEYS}
    for key in ("monitor_interval", "query_timeout", "token_ms", "react_to_named_stop", "layout", "address_agent"):
        assert getattr(pm, key) == defaults[f"pacemaker.{key}"], key
    assert pm.named_user == "bind"
    assert pm.monitor_request == "localhost"
    assert pm.stonith_enabled is False
    assert pm.no_quorum_policy == "ignore"
    assert pm.failback == "manual"
    assert cluster.dns.allow_recursion == ("192.168.100.0/24",)
    # Relative secrets resolve against base_dir (the CLI passes the current directory for the bundled example).
    assert cluster.hacluster_password_file == tmp_path / "secrets" / "hacluster"


def test_seed_example_is_the_bundled_example_with_the_seeds_settings(tmp_path):
    """examples/seed.yaml: the same cluster, only pacemaker differs, set as seed/README.md sets it up."""
    seed, example = config.load(SEED, base_dir=tmp_path), config.load(EXAMPLE, base_dir=tmp_path)
    assert resources.seed_config() == SEED
    for part in ("name", "base", "network", "login", "nodes", "vips", "dns", "hacluster_password_file"):
        assert getattr(seed, part) == getattr(example, part), part
    pm = seed.pacemaker
    assert (pm.monitor_interval, pm.query_timeout, pm.token_ms, pm.react_to_named_stop) == ("10s", 5, 3000, False)
    assert (pm.layout, pm.address_agent, pm.failback, pm.migration_threshold) == ("group", "IPaddr2", "manual", 1)


def test_bundled_example_is_the_one_resources_finds():
    assert resources.example_config().read_bytes() == EXAMPLE.read_bytes()


def test_validate_in_an_empty_directory_uses_the_bundled_example(tmp_path):
    proc = pibuild("validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using the bundled example" in proc.stderr
    assert "clst-01" in proc.stdout and "dns-pm01" in proc.stdout and "dns-pm02" in proc.stdout
    assert "Traceback" not in proc.stderr
    # validate writes nothing: no secret is created by checking a config.
    assert list(tmp_path.iterdir()) == []


def test_validate_prefers_cluster_yaml_in_the_current_directory(tmp_path):
    write_config(tmp_path, {"cluster.name": "here-01"})
    proc = pibuild("validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using cluster.yaml" in proc.stderr
    assert "bundled" not in proc.stderr
    assert "here-01" in proc.stdout


SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcQ0nV2Sb3yXxv7M8jNmdv/8YxgW0xq3ZrT1uLw9pE admin@laptop"


def test_validate_accepts_the_example_with_keys_and_hash(tmp_path):
    cfg = write_config(tmp_path, {
        "login.ssh_authorized_keys": [SSH_KEY],
        "login.password_hash": "$y$j9T$abcdefghijklmnopqrstu.$ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef",
    })
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nobody can log in" not in proc.stderr


def test_validate_warns_when_nobody_can_log_in(tmp_path):
    proc = pibuild("validate", cwd=tmp_path)
    assert proc.returncode == 0
    assert "login.user" in proc.stderr and "nobody can log in" in proc.stderr


@pytest.mark.parametrize("release", ["bullseye", "bookworm", "trixie"])
@pytest.mark.parametrize("arch", ["armhf", "arm64"])
def test_every_release_and_arch_is_accepted(tmp_path, release, arch):
    model = "pi3b" if arch == "arm64" else "pi2b"  # a Pi 2B v1.1 is 32-bit only
    data = example_data()
    edit(data, "base.release", release)
    edit(data, "base.arch", arch)
    edit(data, "nodes[1].model", model)
    cluster = config.from_dict(data, tmp_path / "cluster.yaml")
    assert (cluster.base.release, cluster.base.arch) == (release, arch)


# --- one bad config per rule ---------------------------------------------------------------------------------------

LONG_NAME = "a" * 64
# (id, edits to the example, key path the message must name, the bad value it must show)
BAD = [
    ("duplicate-node-name", {"nodes[1].name": "dns-pm01"}, "nodes[1].name", "'dns-pm01'"),
    ("duplicate-node-address", {"nodes[1].address": "192.168.100.1"}, "nodes[1].address", "'192.168.100.1'"),
    ("node-outside-subnet", {"nodes[1].address": "192.168.101.2"}, "nodes[1].address", "'192.168.101.2'"),
    ("node-network-address", {"nodes[1].address": "192.168.100.0"}, "nodes[1].address", "'192.168.100.0'"),
    ("node-broadcast-address", {"nodes[1].address": "192.168.100.255"}, "nodes[1].address", "'192.168.100.255'"),
    ("node-is-gateway", {"nodes[1].address": "192.168.100.254"}, "nodes[1].address", "'192.168.100.254'"),
    ("node-address-not-ipv4", {"nodes[1].address": "192.168.100.300"}, "nodes[1].address", "'192.168.100.300'"),
    ("node-address-missing", {"nodes[1].address": DELETE}, "nodes[1].address", "missing"),
    ("vip-is-node-address", {"vips[0].address": "192.168.100.2"}, "vips[0].address", "'192.168.100.2'"),
    ("vip-used-twice", {"vips[1].address": "192.168.100.11"}, "vips[1].address", "'192.168.100.11'"),
    ("vip-outside-subnet", {"vips[0].address": "10.0.0.11"}, "vips[0].address", "'10.0.0.11'"),
    ("vip-is-gateway", {"vips[0].address": "192.168.100.254"}, "vips[0].address", "'192.168.100.254'"),
    ("vip-name-invalid", {"vips[0].name": "1vip"}, "vips[0].name", "'1vip'"),
    ("vip-group-twice", {"vips[1].group": "rg-01"}, "vips[1].group", "'rg-01'"),
    ("vip-monitor-is-a-vip-name", {"vips[1].monitor": "rs-vip-1"}, "vips[1].monitor", "'rs-vip-1'"),
    ("vip-name-is-the-clone-monitor", {"vips[0].name": "named-monitor"}, "vips[0].name", "'named-monitor'"),
    ("vip-group-is-the-clone", {"vips[0].group": "named-monitor-clone"}, "vips[0].group", "'named-monitor-clone'"),
    ("unknown-layout", {"pacemaker.layout": "groups"}, "pacemaker.layout", "'groups'"),
    ("unknown-address-agent", {"pacemaker.address_agent": "IPaddr"}, "pacemaker.address_agent", "'IPaddr'"),
    ("vips-empty", {"vips": []}, "vips", "[]"),
    ("vips-missing", {"vips": DELETE}, "vips", "missing"),
    ("hostname-underscore", {"nodes[0].name": "dns_pm01"}, "nodes[0].name", "'dns_pm01'"),
    ("hostname-leading-dash", {"nodes[0].name": "-dnspm01"}, "nodes[0].name", "'-dnspm01'"),
    ("hostname-trailing-dash", {"nodes[0].name": "dnspm01-"}, "nodes[0].name", "'dnspm01-'"),
    ("hostname-too-long", {"nodes[0].name": LONG_NAME}, "nodes[0].name", repr(LONG_NAME)),
    ("hostname-all-digits", {"nodes[0].name": "1234"}, "nodes[0].name", "'1234'"),
    ("hostname-upper-case", {"nodes[0].name": "DNS-PM01"}, "nodes[0].name", "'DNS-PM01'"),
    ("hostname-dot", {"nodes[0].name": "dns.pm01"}, "nodes[0].name", "'dns.pm01'"),
    ("hostname-empty", {"nodes[0].name": ""}, "nodes[0].name", "''"),
    ("hostname-not-a-string", {"nodes[0].name": 1234}, "nodes[0].name", "1234"),
    ("prefer-unknown-node", {"vips[0].prefer": ["dns-pm01", "dns-pm03"]}, "vips[0].prefer[1]", "'dns-pm03'"),
    ("prefer-twice", {"vips[0].prefer": ["dns-pm01", "dns-pm01"]}, "vips[0].prefer", "['dns-pm01', 'dns-pm01']"),
    ("prefer-empty", {"vips[0].prefer": []}, "vips[0].prefer", "[]"),
    ("prefer-not-a-name", {"vips[0].prefer": [["dns-pm01"]]}, "vips[0].prefer[0]", "['dns-pm01']"),
    ("prefer-not-a-list", {"vips[0].prefer": "dns-pm01"}, "vips[0].prefer", "'dns-pm01'"),
    ("one-node", {"nodes": [{"name": "dns-pm01", "address": "192.168.100.1", "model": "pi3b"}],
                  "vips[0].prefer": ["dns-pm01"], "vips[1].prefer": ["dns-pm01"]}, "nodes", "[{'name': 'dns-pm01'"),
    ("no-nodes", {"nodes": DELETE}, "nodes", "missing"),
    ("nodes-not-a-list", {"nodes": "dns-pm01"}, "nodes", "'dns-pm01'"),
    ("node-not-a-mapping", {"nodes[1]": "dns-pm02"}, "nodes[1]", "'dns-pm02'"),
    ("unknown-release", {"base.release": "buster"}, "base.release", "'buster'"),
    ("unknown-arch", {"base.arch": "i386"}, "base.arch", "'i386'"),
    ("unknown-source", {"base.source": "ubuntu"}, "base.source", "'ubuntu'"),
    ("unknown-model", {"nodes[0].model": "pi9"}, "nodes[0].model", "'pi9'"),
    ("pi2b-cannot-run-arm64", {"base.arch": "arm64"}, "nodes[1].model", "'pi2b'"),
    ("pi5-cannot-run-armhf", {"nodes[0].model": "pi5"}, "nodes[0].model", "'pi5'"),
    ("armv6-with-debian", {"nodes[1].model": "pi1b"}, "nodes[1].model", "'pi1b'"),
    ("pizero-with-debian", {"nodes[1].model": "pizero"}, "nodes[1].model", "'pizero'"),
    ("gateway-outside-subnet", {"network.gateway": "10.0.0.1"}, "network.gateway", "'10.0.0.1'"),
    ("gateway-not-ipv4", {"network.gateway": "router"}, "network.gateway", "'router'"),
    ("gateway-missing", {"network.gateway": DELETE}, "network.gateway", "missing"),
    ("prefix-too-small", {"network.prefix": 7}, "network.prefix", "7"),
    ("prefix-too-large", {"network.prefix": 31}, "network.prefix", "31"),
    ("prefix-way-too-large", {"network.prefix": 33}, "network.prefix", "33"),
    ("prefix-a-string", {"network.prefix": "/24"}, "network.prefix", "'/24'"),
    ("prefix-a-bool", {"network.prefix": True}, "network.prefix", "True"),
    ("interface-too-long", {"network.interface": "enxb827eb123456ab"}, "network.interface", "'enxb827eb123456ab'"),
    ("upstream-dns-not-ipv4", {"network.dns": ["dns.example"]}, "network.dns[0]", "'dns.example'"),
    ("upstream-dns-empty", {"network.dns": []}, "network.dns", "missing"),
    ("typo-top-level", {"pacemacker": {"stonith_enabled": False}}, "pacemacker", "{'stonith_enabled': False}"),
    ("typo-in-network", {"network.gatway": "192.168.100.254"}, "network.gatway", "'192.168.100.254'"),
    ("typo-in-node", {"nodes[0].modle": "pi3b"}, "nodes[0].modle", "'pi3b'"),
    ("typo-in-vip", {"vips[0].prefers": ["dns-pm01"]}, "vips[0].prefers", "['dns-pm01']"),
    ("typo-in-pacemaker", {"pacemaker.monitor_intreval": "5s"}, "pacemaker.monitor_intreval", "'5s'"),
    ("typo-in-dns", {"dns.allow_recurson": ["10.0.0.0/8"]}, "dns.allow_recurson", "['10.0.0.0/8']"),
    ("section-not-a-mapping", {"network": "eth0"}, "network", "'eth0'"),
    ("open-resolver", {"dns.allow_recursion": ["0.0.0.0/0"]}, "dns.allow_recursion[0]", "'0.0.0.0/0'"),
    ("open-resolver-v6", {"dns.allow_recursion": ["192.168.100.0/24", "::/0"]}, "dns.allow_recursion[1]", "'::/0'"),
    ("acl-not-a-network", {"dns.allow_recursion": ["192.168.100.0/33"]}, "dns.allow_recursion[0]",
     "'192.168.100.0/33'"),
    ("duration-words", {"pacemaker.monitor_interval": "10 seconds"}, "pacemaker.monitor_interval", "'10 seconds'"),
    ("duration-zero", {"pacemaker.monitor_interval": 0}, "pacemaker.monitor_interval", "0"),
    ("duration-negative", {"pacemaker.monitor_timeout": "-5s"}, "pacemaker.monitor_timeout", "'-5s'"),
    ("duration-unit", {"pacemaker.failure_timeout": "1d"}, "pacemaker.failure_timeout", "'1d'"),
    ("duration-bool", {"pacemaker.monitor_interval": True}, "pacemaker.monitor_interval", "True"),
    ("ssh-key-garbage", {"login.ssh_authorized_keys": ["not a key"]}, "login.ssh_authorized_keys[0]", "'not a key'"),
    ("ssh-key-type-only", {"login.ssh_authorized_keys": ["ssh-ed25519"]}, "login.ssh_authorized_keys[0]",
     "'ssh-ed25519'"),
    ("ssh-key-private", {"login.ssh_authorized_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]},
     "login.ssh_authorized_keys[0]", "'-----BEGIN OPENSSH PRIVATE KEY-----'"),
    ("ssh-keys-not-a-list", {"login.ssh_authorized_keys": "ssh-ed25519 AAAA x"}, "login.ssh_authorized_keys",
     "'ssh-ed25519 AAAA x'"),
    ("password-hash-plaintext", {"login.password_hash": "hunter2"}, "login.password_hash", "'hunter2'"),
    ("password-hash-empty-salt", {"login.password_hash": "$6$"}, "login.password_hash", "'$6$'"),
    ("login-user-reserved", {"login.user": "root"}, "login.user", "'root'"),
    ("login-user-invalid", {"login.user": "Ad min"}, "login.user", "'Ad min'"),
    ("login-user-missing", {"login.user": DELETE}, "login.user", "missing"),
    ("file-source-without-path", {"base.source": "file"}, "base.path", "missing"),
    ("file-source-path-missing", {"base.source": "file", "base.path": "images/missing.img.xz"}, "base.path",
     "'images/missing.img.xz'"),
    ("file-source-not-an-image", {"base.source": "file", "base.path": "raspios.iso"}, "base.path", "'raspios.iso'"),
    ("path-without-file-source", {"base.path": "raspios.img"}, "base.path", "'raspios.img'"),
    ("url-without-raspios", {"base.url": "https://example.org/x.img.xz"}, "base.url",
     "'https://example.org/x.img.xz'"),
    ("url-not-http", {"base.source": "raspios", "base.url": "ftp://example.org/x.img.xz"}, "base.url",
     "'ftp://example.org/x.img.xz'"),
    ("sha256-not-hex", {"base.source": "raspios", "base.sha256": "abc123"}, "base.sha256", "'abc123'"),
    ("mirror-not-a-url", {"base.mirror": "deb.debian.org/debian"}, "base.mirror", "'deb.debian.org/debian'"),
    ("cluster-name-invalid", {"cluster.name": "clst 01"}, "cluster.name", "'clst 01'"),
    ("cluster-section-missing", {"cluster": DELETE}, "cluster", "missing"),
    ("stonith-enabled", {"pacemaker.stonith_enabled": True}, "pacemaker.stonith_enabled", "True"),
    ("stonith-not-a-bool", {"pacemaker.stonith_enabled": "no"}, "pacemaker.stonith_enabled", "'no'"),
    ("no-quorum-policy-unknown", {"pacemaker.no_quorum_policy": "maybe"}, "pacemaker.no_quorum_policy", "'maybe'"),
    ("failback-unknown", {"pacemaker.failback": "sometimes"}, "pacemaker.failback", "'sometimes'"),
    ("migration-threshold-zero", {"pacemaker.migration_threshold": 0}, "pacemaker.migration_threshold", "0"),
    ("migration-threshold-bool", {"pacemaker.migration_threshold": True}, "pacemaker.migration_threshold", "True"),
    ("token-too-short", {"pacemaker.token_ms": 100}, "pacemaker.token_ms", "100"),
    ("named-user-invalid", {"pacemaker.named_user": ""}, "pacemaker.named_user", "''"),
    ("monitor-request-invalid", {"pacemaker.monitor_request": "local host"}, "pacemaker.monitor_request",
     "'local host'"),
]


@pytest.mark.parametrize(("edits", "key", "value"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config_is_refused_naming_key_and_value(tmp_path, edits, key, value):
    cfg = write_config(tmp_path, edits)
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert str(cfg) in proc.stderr
    # One problem line names both the key path and the bad value: "key: value: what to do".
    lines = problem_lines(proc)
    assert any(line.startswith(f"{key}: {value}") for line in lines), f"no '{key}: {value}…' in\n{proc.stderr}"


THIRD_NODE = {"name": "dns-pm03", "address": "192.168.100.3", "model": "pi3b"}
# Input that looked valid to a pattern matched with re.match(...$), or that only together is wrong: (id, edits, key
# path, the bad value as shown, a piece of the fix the message must give).
EXACT_BAD = [
    ("hostname-trailing-newline", {"nodes[1].name": "dns-pm02\n"}, "nodes[1].name", r"'dns-pm02\n'",
     "a line break"),
    ("hostname-inner-newline", {"nodes[1].name": "dns\npm02"}, "nodes[1].name", r"'dns\npm02'", "remove it"),
    ("cluster-name-trailing-newline", {"cluster.name": "clst-01\n"}, "cluster.name", r"'clst-01\n'", "remove it"),
    ("vip-name-escape", {"vips[0].name": "rs-vip\x1b1"}, "vips[0].name", r"'rs-vip\x1b1'", "U+001B"),
    ("vip-prefer-tab", {"vips[0].prefer": ["dns-pm01\t", "dns-pm02"]}, "vips[0].prefer[0]", r"'dns-pm01\t'",
     "a tab"),
    ("interface-trailing-newline", {"network.interface": "eth0\n"}, "network.interface", r"'eth0\n'", "remove it"),
    ("user-trailing-newline", {"login.user": "admin\n"}, "login.user", r"'admin\n'", "remove it"),
    ("ssh-key-carriage-return", {"login.ssh_authorized_keys": [SSH_KEY + "\r"]}, "login.ssh_authorized_keys[0]",
     repr(SSH_KEY + "\r"), "a carriage return"),
    ("password-hash-trailing-newline", {"login.password_hash": "$6$salt$hash\n"}, "login.password_hash",
     r"'$6$salt$hash\n'", "remove it"),
    ("duration-trailing-newline", {"pacemaker.monitor_interval": "10s\n"}, "pacemaker.monitor_interval",
     r"'10s\n'", "remove it"),
    ("monitor-request-trailing-newline", {"pacemaker.monitor_request": "localhost\n"},
     "pacemaker.monitor_request", r"'localhost\n'", "remove it"),
    ("named-user-trailing-newline", {"pacemaker.named_user": "bind\n"}, "pacemaker.named_user", r"'bind\n'",
     "remove it"),
    ("mirror-line-separator", {"base.mirror": "http://deb.debian.org/debian\u2028"}, "base.mirror",
     repr("http://deb.debian.org/debian\u2028"), "U+2028"),
    ("secret-path-nul", {"secrets.hacluster_password_file": "secrets/hacluster\x00"},
     "secrets.hacluster_password_file", r"'secrets/hacluster\x00'", "U+0000"),
    ("acl-trailing-newline", {"dns.allow_recursion": ["192.168.100.0/24\n"]}, "dns.allow_recursion[0]",
     r"'192.168.100.0/24\n'", "remove it"),
    ("open-resolver-split-in-two", {"dns.allow_recursion": ["0.0.0.0/1", "128.0.0.0/1"]}, "dns.allow_recursion",
     "['0.0.0.0/1', '128.0.0.0/1']", "cover every IPv4 address"),
    ("open-resolver-split-in-three", {"dns.allow_recursion": ["192.168.100.0/24", "128.0.0.0/1", "0.0.0.0/2",
                                                              "64.0.0.0/2"]},
     "dns.allow_recursion", "['192.168.100.0/24', '128.0.0.0/1', '0.0.0.0/2', '64.0.0.0/2']",
     "list only your own networks"),
    ("open-resolver-v6-split", {"dns.allow_recursion": ["192.168.100.0/24", "::/1", "8000::/1"]},
     "dns.allow_recursion", "['192.168.100.0/24', '::/1', '8000::/1']", "cover every IPv6 address"),
    ("quorum-ignore-with-three-nodes", {"nodes[2]": THIRD_NODE}, "pacemaker.no_quorum_policy", "'ignore'",
     "set stop"),
]


@pytest.mark.parametrize(("edits", "key", "value", "fix"), [case[1:] for case in EXACT_BAD],
                         ids=[case[0] for case in EXACT_BAD])
def test_inexact_input_is_refused_once_with_the_fix(tmp_path, edits, key, value, fix):
    data = example_data()
    if "nodes[2]" in edits:
        data["nodes"].append(None)
    for path, v in edits.items():
        edit(data, path, v)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    # Exactly one problem: the key, its value, the fix; no second rule repeats it.
    (line,) = problem_lines(proc)
    assert line.startswith(f"{key}: {value}: "), proc.stderr
    assert fix in line, line


def test_recursion_for_public_addresses_is_warned_about(tmp_path):
    cfg = write_config(tmp_path, {"dns.allow_recursion": ["192.168.100.0/24", "0.0.0.0/1"]})
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: dns.allow_recursion[1]: '0.0.0.0/1': covers public addresses" in proc.stderr
    assert "dns.allow_recursion[0]" not in proc.stderr
    cluster = config.load(cfg)
    assert cluster.dns.allow_recursion == ("192.168.100.0/24", "0.0.0.0/1")


@pytest.mark.parametrize("networks", [["192.168.100.0/24"], ["10.0.0.0/8", "172.16.0.0/12", "fd00::/8"],
                                      ["100.64.0.0/10"]])
def test_recursion_for_private_networks_is_not_warned_about(tmp_path, networks):
    cluster = config.from_dict({**example_data(), "dns": {"allow_recursion": networks}}, tmp_path / "c.yaml")
    assert cluster.warnings == ()


@pytest.mark.parametrize(("nodes", "written", "policy"), [
    (2, DELETE, "ignore"), (2, "stop", "stop"), (3, DELETE, "stop"), (3, "stop", "stop"), (3, "freeze", "freeze"),
    (4, DELETE, "stop"),
])
def test_no_quorum_policy_by_node_count(tmp_path, nodes, written, policy):
    data = example_data()
    data["nodes"] += [{"name": f"dns-pm0{i}", "address": f"192.168.100.{i}", "model": "pi3b"}
                      for i in range(3, nodes + 1)]
    edit(data, "pacemaker.no_quorum_policy", written)
    assert config.from_dict(data, tmp_path / "c.yaml").pacemaker.no_quorum_policy == policy


def test_the_model_message_names_the_arch(tmp_path):
    cfg = write_config(tmp_path, {"base.arch": "arm64"})
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = [line for line in problem_lines(proc) if line.startswith("nodes[1].model")]
    assert "arm64" in line and "armhf" in line  # what it cannot run, and what to use instead


def test_the_armv6_message_names_the_fix(tmp_path):
    cfg = write_config(tmp_path, {"nodes[1].model": "pi1b"})
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    (line,) = [line for line in problem_lines(proc) if line.startswith("nodes[1].model")]
    assert "ARMv6" in line and "raspios" in line


def test_an_existing_file_source_is_accepted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "raspios.img.xz").write_bytes(b"")
    cfg = write_config(tmp_path, {"base.source": "file", "base.path": "images/raspios.img.xz"})
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cluster = config.load(cfg)
    assert cluster.base.path == tmp_path / "images" / "raspios.img.xz"


# --- malformed files ---------------------------------------------------------------------------------------------

def _example_lines() -> list[str]:
    return EXAMPLE.read_text().splitlines(keepends=True)


def _line_of(lines: list[str], text: str) -> int:
    (number,) = [i for i, line in enumerate(lines, 1) if text in line]
    return number


def test_malformed_yaml_names_the_line(tmp_path):
    lines = _example_lines()
    n = _line_of(lines, "prefix: 24")
    lines[n - 1] = lines[n - 1].replace("  prefix", " prefix")  # bad indentation
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("".join(lines))
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "YAML" in proc.stderr
    assert f"line {n}," in proc.stderr


def test_unclosed_quote_names_the_line_where_it_starts(tmp_path):
    lines = _example_lines()
    n = _line_of(lines, "gateway: 192.168.100.254")
    lines[n - 1] = lines[n - 1].replace("gateway: ", 'gateway: "')
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("".join(lines))
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"starts at line {n}," in proc.stderr


def test_unclosed_brace_names_the_line_where_it_starts(tmp_path):
    lines = _example_lines()
    n = _line_of(lines, "name: dns-pm02")
    lines[n - 1] = lines[n - 1].replace("pi2b}", "pi2b")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("".join(lines))
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"line {n}," in proc.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("- cluster\n- nodes\n", "top level must be a mapping"),
    ("just a string\n", "top level must be a mapping"),
    ("cluster:\n  name: a\n\tbase: x\n", "line 3"),
])
def test_malformed_files(tmp_path, text, expected):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(text)
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr


def test_several_problems_are_listed_at_once(tmp_path):
    cfg = write_config(tmp_path, {
        "cluster.name": "clst 01",
        "base.release": "buster",
        "network.prefix": 33,
        "pacemaker.failback": "sometimes",
        "dns.allow_recursion": ["0.0.0.0/0"],
    })
    proc = pibuild("-c", str(cfg), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{cfg}: 5 problem(s):" in proc.stderr
    keys = [line.split(":")[0] for line in problem_lines(proc)]
    assert keys == ["cluster.name", "base.release", "network.prefix", "pacemaker.failback", "dns.allow_recursion[0]"]


def test_from_dict_raises_config_error_with_every_problem(tmp_path):
    data = example_data()
    edit(data, "nodes[1].name", "dns_pm02")
    edit(data, "vips[1].address", "192.168.100.1")
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data, tmp_path / "cluster.yaml")
    joined = "\n".join(info.value.problems)
    assert "nodes[1].name: 'dns_pm02'" in joined
    assert "vips[1].address: '192.168.100.1'" in joined
    assert info.value.exit_code == 2


# --- the -c option -----------------------------------------------------------------------------------------------

def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = pibuild("-c", str(missing), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(missing) in proc.stderr and "no such file" in proc.stderr


def test_config_that_is_a_directory(tmp_path):
    proc = pibuild("-c", str(tmp_path), "validate", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "cannot read" in proc.stderr



# --- the schema --------------------------------------------------------------------------------------------------

def test_readme_key_table_is_the_schemas():
    readme = (REPO / "README.md").read_text()
    assert schema.TABLE_HEAD in readme
    assert schema.replace_table(readme, schema.readme_table(config.KEYS)) == readme, (
        "README.md's key table differs from the schema: run `python -m builder.schema --readme README.md`")


def test_schema_printer_rewrites_a_stale_table(tmp_path):
    readme = (REPO / "README.md").read_text()
    stale = tmp_path / "README.md"
    stale.write_text(readme.replace("| `base.updates` |", "| `base.update` |").replace(
        "| `pacemaker.token_ms` |", "| `pacemaker.token` |"))
    proc = subprocess.run([sys.executable, "-m", "builder.schema", "--readme", str(stale)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert stale.read_text() == readme
    printed = subprocess.run([sys.executable, "-m", "builder.schema"], cwd=REPO, capture_output=True, text=True)
    assert printed.stdout == schema.readme_table(config.KEYS)
    assert printed.stdout.count("\n") == len(config.KEYS) + 2


def test_a_key_is_one_schema_entry(tmp_path):
    """A new key is read, type-checked, checked, listed among the known keys and documented from its entry alone."""
    extra = schema.Key("dns.retries", schema.whole(1, 9, "must be between 1 and 9"), 3, "how often to retry",
                       lambda n: "odd numbers only" if n % 2 == 0 else None)
    keys = config.KEYS + (extra,)
    # (written, the problem, the value used: the default where the value cannot be read)
    for value, problem, used in (("x", "dns.retries: 'x': must be a whole number", 3),
                                 (12, "dns.retries: 12: must be between 1 and 9", 3),
                                 (4, "dns.retries: 4: odd numbers only", 4),
                                 (5, None, 5), (None, None, 3)):
        r = schema.Reader(keys, tmp_path)
        values = r.read({**example_data(), "dns": {"retries": value}})
        assert r.problems == ([problem] if problem else [])
        assert values["dns.retries"] == used
    r = schema.Reader(keys, tmp_path)
    r.read({**example_data(), "dns": {"retry": 5}})
    assert r.problems == ["dns.retry: 5: unknown key; known keys here: allow_recursion, retries"]
    assert "| `dns.retries` | `3` | how often to retry |\n" in schema.readme_table(keys)
