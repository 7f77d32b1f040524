"""cluster.yaml: load it into immutable, typed objects and find every problem at once.

KEYS is the schema (builder/schema.py reads by it): one entry per key, from which come the reading, the unknown-key
check and the README's key table. RULES are the checks that span keys. Each problem names the key path, the bad
value and what would be valid; `load()` raises ConfigError listing them all.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.errors import ConfigError
from builder.releases import ARCHES, MODELS, RELEASES
from builder.schema import (
    FLAG,
    LIST,
    MISSING,
    REQUIRED,
    TEXT,
    WHOLE,
    Absent,
    Computed,
    Invalid,
    Key,
    Kind,
    Reader,
    choice,
    whole,
)

SOURCES = ("raspios", "file", "debian")
NO_QUORUM_POLICIES = ("ignore", "stop", "freeze", "demote", "suicide")
FAILBACK = ("manual", "auto")
LAYOUTS = ("clone", "group")
# The agent that holds a floating address: pibuild's own (overlays/common/usr/lib/ocf/resource.d/pibuild/vip) or
# resource-agents' IPaddr2 (the seed's).
ADDRESS_AGENTS = {"vip": "ocf:pibuild:vip", "IPaddr2": "ocf:heartbeat:IPaddr2"}
# layout clone: the named2 primitive and the clone pcs makes of it (pcs names a clone "<primitive>-clone").
CLONE_MONITOR = "named-monitor"
CLONE_MONITOR_IDS = (CLONE_MONITOR, f"{CLONE_MONITOR}-clone")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Networks that are not public: recursion for a network outside these is warned about.
NON_PUBLIC_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "fc00::/7", "fe80::/10", "::1/128"))

# Every pattern is used with fullmatch(): the whole value, so a trailing newline never slips through (re.match with
# a "$" accepts one).
HOSTNAME_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Pacemaker ids are XML IDs: a letter or underscore first.
PACEMAKER_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
DURATION_RE = re.compile(r"([1-9][0-9]*)(ms|s|sec|m|min|h|hr)?")
CRYPT_RE = re.compile(r"\$(y|gy|7|6|5|2[abxy]?)\$[^\s:]+")
SSH_KEY_RE = re.compile(r"(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+"
                        r"|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( .*)?")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
URL_RE = re.compile(r"(https?|file)://\S+")
# A name to query: labels of letters, digits, '-' and '_', dot-separated, an optional final dot.
DNS_NAME_RE = re.compile(r"(?=.{1,253}\.?\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?")
# Accounts the images already have: the login user must not collide with them.
RESERVED_USERS = {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
                  "www-data", "backup", "list", "irc", "nobody", "systemd-network", "systemd-resolve", "messagebus",
                  "sshd", "hacluster", "bind", "haclient", "_apt", "systemd-timesync", "polkitd", "avahi"}


# ---- one key's checks (the value -> None or the fix) and conversions (the value -> the value used, or Invalid) -----

def _pattern(regex: re.Pattern, fix: str):
    return lambda value: None if regex.fullmatch(value) else fix


def _hostname(name: str) -> str | None:
    if not HOSTNAME_RE.fullmatch(name):
        return "must be a hostname: lower-case letters, digits and '-', at most 63, no '-' at either end"
    return "a hostname cannot be all digits" if name.isdigit() else None


def _login_user(user: str) -> str | None:
    if not USER_RE.fullmatch(user):
        return "use lower-case letters, digits, '-' or '_', starting with a letter"
    if user in RESERVED_USERS:
        return "this account already exists in the image; choose another name, e.g. admin"
    return None


def _ipv4(value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise Invalid("must be an IPv4 address such as 192.168.100.1") from None


def _duration(value: str | int) -> str:
    value = f"{value}s" if isinstance(value, int) else value
    if not DURATION_RE.fullmatch(value):
        raise Invalid("must be a duration such as 10s, 500ms or 2min")
    return value


def _ssh_key(key: Any) -> str:
    if not isinstance(key, str) or not SSH_KEY_RE.fullmatch(key.strip()):
        raise Invalid("must be one public key line, e.g. 'ssh-ed25519 AAAA… you@host' (the .pub file's content)")
    return key.strip()


def _node_name(name: Any) -> str:
    if not isinstance(name, str):
        raise Invalid("must be a node's name")
    return name


def _prefer(names: list) -> str | None:
    if not names:
        return "list at least one node, most preferred first"
    return "lists a node twice" if len(set(map(str, names))) != len(names) else None


def _network(value: Any) -> str:
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise Invalid("must be a network such as 192.168.100.0/24") from None
    if net.prefixlen == 0:
        raise Invalid("would make an open resolver that anyone can abuse; list your own networks")
    return str(net)


IPV4 = Kind((str,), "a string", _ipv4)
DURATION = Kind((str, int), "a duration such as 10s, 500ms or 2min", _duration)
PACEMAKER_ID = _pattern(PACEMAKER_ID_RE, "must start with a letter or '_' and hold only letters, digits, '.-_'")


def _nodes(values: dict) -> list[dict]:
    """The nodes read with a name and an address: what the rules across keys count and compare against."""
    return [n for n in values.get("nodes") or () if n["name"] and n["address"]]


def _subnet(values: dict) -> ipaddress.IPv4Network | None:
    nodes = _nodes(values)
    return ipaddress.ip_network(f"{nodes[0]['address']}/{values['network.prefix']}", strict=False) if nodes else None


# ---- the schema: every key of cluster.yaml, in the order the README's table and the messages list them -------------
# Adding a key is one entry here (and the field of its dataclass below); its unknown-key check, its reading and its
# README row come from it. Rules across keys are the functions in RULES.

KEYS = (
    Key("cluster.name", TEXT, REQUIRED, "corosync cluster name (`clst-01`), 1–32 of `A-Za-z0-9_-`",
        _pattern(CLUSTER_NAME_RE, "use 1-32 letters, digits, '-' or '_', starting with a letter or digit")),
    Key("base.source", choice(SOURCES), REQUIRED,
        "`debian` (built from Debian's archive), `raspios` (Raspberry Pi OS Lite, downloaded and cached), `file` (a "
        "local `.img`/`.img.xz`)"),
    Key("base.release", choice(RELEASES), REQUIRED, "`bullseye`, `bookworm`, `trixie`"),
    Key("base.arch", choice(ARCHES), REQUIRED, "`armhf` or `arm64` (every node's `model` must run it)"),
    Key("base.url", TEXT, None, "`raspios`: pin an image (with `base.sha256`)",
        _pattern(URL_RE, "must be an http://, https:// or file:// URL"), shown="newest image"),
    Key("base.sha256", TEXT, None, "`raspios`: the pinned image's checksum (`sha256sum` of the `.img.xz`)",
        lambda digest: None if SHA256_RE.fullmatch(digest.lower()) else
        "must be 64 hexadecimal digits (sha256sum's output)"),
    Key("base.path", TEXT, None, "`file`: the image to start from, relative to the config"),
    Key("base.mirror", TEXT, DEFAULT_MIRROR, "`debian`: the archive mmdebstrap uses",
        _pattern(URL_RE, "must be an http://, https:// or file:// URL of a Debian archive")),
    Key("base.updates", FLAG, True,
        "`debian`: also the `-updates` and `-security` suites (the example turns it off only because the test "
        "machines' mirror lags behind the security archive)"),
    Key("network.interface", TEXT, "eth0", "the interface the static address and VIPs go on",
        _pattern(IFNAME_RE, "must be an interface name of at most 15 characters, e.g. eth0")),
    Key("network.prefix", whole(8, 30, "must be between 8 and 30 (24 means 255.255.255.0)"), 24,
        "prefix length of the nodes' subnet (8–30)"),
    Key("network.gateway", IPV4, REQUIRED, "default route, inside the subnet", what="the router's address"),
    Key("network.dns", LIST, (), "upstream resolvers: BIND's forwarders",
        lambda dns: None if dns else Absent("list at least one upstream resolver (BIND forwards to it)"),
        each=_ipv4, shown="required"),
    Key("login.user", TEXT, REQUIRED,
        "the account you log in with (sudo; no password needed for sudo when no `password_hash`)", _login_user,
        what="the account you log in with"),
    Key("login.ssh_authorized_keys", LIST, (), "public key lines", each=_ssh_key),
    Key("login.password_hash", TEXT, None,
        "crypt hash (`mkpasswd -m yescrypt`, `openssl passwd -6`) for console/ssh password login",
        _pattern(CRYPT_RE, "must be a crypt hash, e.g. the output of `mkpasswd -m yescrypt` or `openssl passwd -6`")),
    Key("secrets.hacluster_password_file", TEXT, "secrets/hacluster",
        "created 0600 (its directory 0700) with a random password when missing; relative to the config; one line of "
        "printable characters"),
    Key("secrets.corosync_key_file", TEXT, "secrets/corosync-key",
        "the cluster's corosync secret: created 0600 with 64 random bytes (hex, one line) when missing; every "
        "image's corosync authkey is derived from it, the cluster name and the node list (see [Replacing a card]"
        "(#replacing-a-card-flash-the-same-image-and-power-on))"),
    Key("nodes", LIST, REQUIRED, "the cluster's machines, at least two; the first node forms the cluster",
        lambda nodes: "a cluster needs at least two nodes" if len(nodes) < 2 else None, what="at least two nodes"),
    Key("nodes[].name", TEXT, REQUIRED, "hostname", _hostname, what="the node's hostname"),
    Key("nodes[].address", IPV4, REQUIRED, "static IPv4 address"),
    Key("nodes[].model", TEXT, REQUIRED, "the board: " + ", ".join(f"`{m}`" for m in MODELS),
        lambda model: None if model in MODELS else f"unknown model; known: {', '.join(MODELS)}",
        what="the board, e.g. pi3b"),
    Key("vips", LIST, REQUIRED, "the floating addresses clients use, at least one",
        lambda vips: None if vips else
        "list at least one floating address: without one the cluster protects nothing",
        what="the floating addresses clients use"),
    Key("vips[].name", TEXT, REQUIRED, "the address's Pacemaker resource", PACEMAKER_ID),
    Key("vips[].address", IPV4, REQUIRED, "the floating IPv4 address, in the nodes' subnet"),
    Key("vips[].prefer", LIST, REQUIRED,
        "nodes to run on, most preferred first: scores 100 × n, …, 100", _prefer, each=_node_name,
        what="the nodes to run on, most preferred first"),
    Key("vips[].group", TEXT, Computed(lambda values, i: f"rg-{i + 1:02d}", "`rg-NN`"),
        "with `layout: group`: the group of the VIP's BIND monitor and address", PACEMAKER_ID),
    Key("vips[].monitor", TEXT, Computed(lambda values, i: f"monitor-named{i + 1}", "`monitor-namedN`"),
        "with `layout: group`: the VIP's own named2 monitor", PACEMAKER_ID),
    Key("pacemaker.stonith_enabled", FLAG, False, "pibuild configures no fencing device, so `true` is refused",
        lambda on: "pibuild configures no fencing device, and Pacemaker starts no resource with stonith on and no "
                   "device; set it to false" if on else None),
    Key("pacemaker.no_quorum_policy", choice(NO_QUORUM_POLICIES),
        Computed(lambda values, i: default_no_quorum_policy(len(_nodes(values))),
                 "`ignore` with two nodes, `stop` with three or more"),
        "what a node without quorum does with its resources (see [Quorum and split brain](#quorum-and-split-brain))."
        " Two nodes: the seed's `ignore`, which matters only when one node starts while the other is dead. Three or "
        "more: `ignore` is refused, since a node cut off from the majority would keep the VIPs the majority also "
        "took"),
    Key("pacemaker.migration_threshold",
        whole(1, None, "must be 1 or more (the seed uses 1: fail over at the first failure)"), 1,
        "fail over at the first failure (the seed: \"without it the resource never fails over\")"),
    # pibuild's default; the seed (and the bundled example) monitor every 10s.
    Key("pacemaker.monitor_interval", DURATION, "2s", "how often named2 checks BIND (the seed: `10s`)"),
    Key("pacemaker.monitor_timeout", DURATION, "20s", "named2's monitor operation timeout"),
    Key("pacemaker.failback", choice(FAILBACK), "manual",
        "`manual`: a VIP moved by a failure (BIND stopped or frozen there) stays on the survivor until `pcs "
        "resource cleanup` (the seed); `auto`: it returns once BIND on its preferred node answers again (after "
        "`failure_timeout`). Under both, a node that comes back (powered on again, a replaced card) gets its VIPs "
        "back once its BIND answers: a node's loss is not a failure of its VIPs"),
    Key("pacemaker.failure_timeout", DURATION, "60s", "with `failback: auto`: how long a failure counts"),
    Key("pacemaker.named_user", TEXT, "bind", "the named2 agent's user BIND runs as",
        _pattern(USER_RE, "must be the user BIND runs as (Debian's is 'bind')")),
    Key("pacemaker.monitor_request", TEXT, "localhost", "the name the named2 agent queries",
        _pattern(DNS_NAME_RE, "must be a DNS name BIND answers, e.g. localhost (the seed's)")),
    # pibuild's default fits a LAN; the seed ran corosync's 3000.
    Key("pacemaker.token_ms", whole(500, 60000, "must be between 500 and 60000 milliseconds"), 1000,
        "corosync's totem token: how long a silent node takes to be declared lost (plus consensus, 1.2 × token); the "
        "seed: corosync's `3000`"),
    # Not 2: in the lab a busy survivor's BIND (taking over both addresses while the other node rejoined) missed two
    # 2 s queries in a row, and its own monitor failing would have left no node for the addresses.
    Key("pacemaker.query_timeout", WHOLE, 3,
        "seconds named2 waits for each answer of BIND (the agent's own default and the seed: `5`); the monitor "
        "fails after two unanswered queries in a row, so a frozen BIND is found within `monitor_interval` + 2 × "
        "`query_timeout`; at most a third of `monitor_timeout`. Within 30 s of a VIP arriving or leaving the node "
        "(named answers nothing while it rescans its interfaces, which outlasted both queries on loaded emulated "
        "nodes) it asks again until `monitor_timeout` is nearly spent"),
    Key("pacemaker.react_to_named_stop", FLAG, True,
        "BIND's stop hands its addresses over before BIND goes: `pibuild-named-handoff.service` "
        "(`PartOf=`/`After=named.service`, so systemd stops it just before named on every stop or restart) marks the "
        "local named2 failed (`crm_resource --fail`) and waits, at most 20 s, until no floating address is left on "
        "the node; only then does BIND stop, so it answers until its address has moved. A restart (`systemctl "
        "restart named`, a bind9 upgrade) hands over too; with `failback: manual` the addresses then stay on the "
        "other node until `pcs resource cleanup`, as after any failure. A BIND that dies by itself is reported the "
        "moment it is gone (`ExecStopPost`: `/usr/lib/pibuild/named-stopped`). Nothing happens before the cluster "
        "formed or during a shutdown. The seed: `false`"),
    # builder/plan.py ties BIND's health and the floating addresses by this.
    Key("pacemaker.layout", choice(LAYOUTS), "clone",
        "`clone`: one named2 monitor runs on every node (a Pacemaker clone) and each VIP is colocated with it "
        "(score 100000: finite, so the last node keeps its VIPs when its monitor fails, where `INFINITY` stopped "
        "them) and ordered after it (`kind=Optional`, so a failure elsewhere restarts nothing), so a failover "
        "moves the address alone. `group`: the seed's, a group per VIP of its own named2 monitor and the address, "
        "which move together (in the lab that move cost ~10 s of agent calls)"),
    Key("pacemaker.address_agent", choice(ADDRESS_AGENTS), "vip",
        "what holds a floating address: `vip` is pibuild's `ocf:pibuild:vip` (adds the address, announces it with "
        "gratuitous ARP through resource-agents' `send_arp`, removes it; a few processes; its stop ends only the "
        "`send_arp` it started, checked by its command line, because a pidfile can outlive its process and "
        "`send_arp` itself kills whatever pid an existing pidfile names; `allow-migrate=true`: a planned move adds "
        "and announces the address on the new node before the old one removes it, see [the client's figures]"
        "(#what-a-client-feels-of-a-failover)), `IPaddr2` is resource-agents' (the seed's), "
        "which starts about thirty processes before it adds the address: 1–3 s of every failover on an emulated lab "
        "node, a fraction of that on a Pi"),
    Key("dns.allow_recursion", LIST,
        Computed(lambda values, i: [str(s)] if (s := _subnet(values)) else [], "the nodes' subnet"),
        "networks BIND recurses for; refused when they cover every address, however split (`0.0.0.0/0`, `::/0`, "
        "`[0.0.0.0/1, 128.0.0.0/1]`: an open resolver); a warning for a network outside the private ranges (10/8, "
        "172.16/12, 192.168/16, 100.64/10, link-local, loopback, fc00::/7)", each=_network),
)


def schema_defaults(section: str):
    """Give a dataclass's fields the schema's defaults of section's keys (before @dataclass reads them), so an object
    made by hand (a test's Base) is what a config that leaves those keys out loads to."""
    def apply(cls):
        for key in KEYS:
            if key.parent == section and key.name in cls.__annotations__ and not key.required \
                    and not isinstance(key.default, Computed):
                setattr(cls, key.name, key.default)
        return cls
    return apply


# ---- what load() returns ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
@schema_defaults("base")
class Base:
    source: str
    release: str
    arch: str
    url: str | None
    sha256: str | None
    path: Path | None
    mirror: str
    updates: bool


@dataclass(frozen=True)
class Network:
    interface: str
    prefix: int
    gateway: str
    dns: tuple[str, ...]


@dataclass(frozen=True)
@schema_defaults("login")
class Login:
    user: str
    ssh_authorized_keys: tuple[str, ...]
    password_hash: str | None


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    model: str


@dataclass(frozen=True)
class Vip:
    name: str
    address: str
    prefer: tuple[str, ...]
    group: str
    monitor: str

    def scores(self) -> list[tuple[str, int]]:
        """The seed's location scores: the first preferred node 100 × n, the next 100 × (n − 1), …"""
        n = len(self.prefer)
        return [(node, 100 * (n - i)) for i, node in enumerate(self.prefer)]


def default_no_quorum_policy(node_count: int) -> str:
    """Two nodes: ignore. pcs gives a two-node cluster corosync's two_node (which implies wait_for_all), so the
    survivor of a failure keeps quorum anyway; ignore only lets a node that starts alone, its peer dead, serve.
    Three or more: Pacemaker's own stop, so a node cut off from the majority gives up its VIPs, which the majority
    takes over."""
    return "ignore" if node_count <= 2 else "stop"


@dataclass(frozen=True, kw_only=True)
@schema_defaults("pacemaker")
class Pacemaker:
    stonith_enabled: bool
    no_quorum_policy: str  # no default: load() chooses by node count (default_no_quorum_policy)
    migration_threshold: int
    monitor_interval: str
    monitor_timeout: str
    failback: str
    failure_timeout: str
    named_user: str
    monitor_request: str
    token_ms: int
    query_timeout: int
    react_to_named_stop: bool
    layout: str
    address_agent: str


@dataclass(frozen=True)
class Dns:
    allow_recursion: tuple[str, ...]


@dataclass(frozen=True)
class Cluster:
    name: str
    base: Base
    network: Network
    login: Login
    hacluster_password_file: Path
    # The cluster's corosync secret: every card's corosync authkey is derived from it (builder/secrets.py).
    corosync_key_file: Path
    nodes: tuple[Node, ...]
    vips: tuple[Vip, ...]
    pacemaker: Pacemaker
    dns: Dns
    source: Path
    # Accepted, but worth a look (e.g. recursion for public addresses): "key: value: why", printed by the CLI.
    warnings: tuple[str, ...] = ()

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{self.nodes[0].address}/{self.network.prefix}", strict=False)

    @property
    def initiator(self) -> Node:
        """The node that forms the cluster: the first one listed."""
        return self.nodes[0]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


# ---- rules across keys: each reads r.values (by schema path; a list of mappings as dicts) and records problems -----

def _base_source(r: Reader) -> None:
    v = r.values
    source, path = v["base.source"], v["base.path"]
    if source == "file":
        if path is None:
            r.problem("base.path", MISSING, "required when base.source is 'file': the .img or .img.xz to start from")
        elif not path.endswith((".img", ".img.xz")):
            r.problem("base.path", path, "must name a .img or .img.xz file")
        elif not (r.base_dir / path).expanduser().is_file():
            r.problem("base.path", path, f"no such file ({(r.base_dir / path).expanduser()})")
    elif path is not None:
        r.problem("base.path", path, "only used with base.source: file; remove it or set source: file")
    for key in ("base.url", "base.sha256"):
        if v[key] is not None and source not in (None, "raspios"):
            r.problem(key, v[key], "only used with base.source: raspios")


def _boards(r: Reader) -> None:
    """Every node's board runs base.arch (and, when Debian's, is not ARMv6)."""
    arch, source = r.values["base.arch"], r.values["base.source"]
    for i, node in enumerate(r.values["nodes"] or ()):
        model = MODELS.get(node["model"])
        if model is None or arch is None:
            continue
        if arch not in model.arches:
            r.problem(f"nodes[{i}].model", node["model"],
                      f"a {model.description} cannot run {arch}; use base.arch: {model.arches[0]} or another board")
        elif model.armv6 and source == "debian":
            r.problem(f"nodes[{i}].model", node["model"],
                      f"a {model.description} is ARMv6, which Debian's armhf cannot run; use base.source: raspios")


def _node_names_and_addresses(r: Reader) -> None:
    nodes = list(enumerate(r.values["nodes"] or ()))
    _unique(r, "name", [(f"nodes[{i}].name", n["name"]) for i, n in nodes])
    _unique(r, "address", [(f"nodes[{i}].address", n["address"]) for i, n in nodes])
    subnet = _subnet(r.values)
    if subnet is None:
        return
    gateway = r.values["network.gateway"]
    for i, node in nodes:
        _in_subnet(r, f"nodes[{i}].address", node["address"], subnet)
    if gateway:
        _in_subnet(r, "network.gateway", gateway, subnet)
        for i, node in nodes:
            if node["address"] == gateway:
                r.problem(f"nodes[{i}].address", gateway, "is the gateway's address; give the node its own")


def _vip_addresses(r: Reader) -> None:
    subnet, gateway = _subnet(r.values), r.values["network.gateway"]
    node_addresses = {n["address"] for n in _nodes(r.values)}
    vips = list(enumerate(r.values["vips"] or ()))
    for i, vip in vips:
        key, address = f"vips[{i}].address", vip["address"]
        if address and subnet:
            _in_subnet(r, key, address, subnet)
        if address in node_addresses:
            r.problem(key, address, "is a node's own address; a floating address must be unused")
        if address and address == gateway:
            r.problem(key, address, "is the gateway's address; a floating address must be unused")
    _unique(r, "address", [(f"vips[{i}].address", v["address"]) for i, v in vips])


def _vip_prefer(r: Reader) -> None:
    names = {n["name"] for n in _nodes(r.values)}
    # A name refused for a control character ('dns-pm02\n') is not also news as an unknown node in `prefer`.
    if not names or any(re.fullmatch(r"nodes\[\d+\]\.name", key) for key in r.unprintable):
        return
    for i, _ in enumerate(r.values["vips"] or ()):
        for j, name in enumerate(r.written.get(f"vips[{i}].prefer") or ()):
            if isinstance(name, str) and name not in names:
                r.problem(f"vips[{i}].prefer[{j}]", name, f"unknown node; nodes are: {', '.join(sorted(names))}")


def _vip_ids(r: Reader) -> None:
    """A VIP's name, group and monitor are Pacemaker ids: unique, and not the id of pibuild's own BIND monitor."""
    ids = [(f"vips[{i}].{k}", v[k]) for i, v in enumerate(r.values["vips"] or ())
           if all(v[k] for k in ("name", "address", "group", "monitor")) for k in ("name", "group", "monitor")]
    _unique(r, "name, group or monitor", ids)
    for key, ident in ids:
        if ident in CLONE_MONITOR_IDS:
            r.problem(key, ident, f"is the id of pibuild's cloned BIND monitor ({', '.join(CLONE_MONITOR_IDS)}); "
                                  "choose another name")


def _query_timeout(r: Reader) -> None:
    # A monitor may send two queries (named2: one unanswered query is not a dead BIND); both must fit.
    query, timeout = r.values["pacemaker.query_timeout"], r.values["pacemaker.monitor_timeout"]
    if not 1 <= query <= duration_seconds(timeout) / 3:
        r.problem("pacemaker.query_timeout", query,
                  f"must be at least 1 second and at most a third of monitor_timeout ({timeout}): "
                  "a monitor may wait for two queries")


def _quorum(r: Reader) -> None:
    count = len(_nodes(r.values))
    if r.values["pacemaker.no_quorum_policy"] == "ignore" and count >= 3:
        r.problem("pacemaker.no_quorum_policy", "ignore",
                  f"with {count} nodes a node cut off from the others would keep serving the VIPs the majority "
                  "also took over (the same address twice on the LAN); remove the key (the default for three or "
                  "more nodes is stop) or set stop")


def _recursion(r: Reader) -> None:
    """No open resolver, however the networks are split; a warning for recursion for public addresses."""
    written, acl = r.written.get("dns.allow_recursion") or [], r.values["dns.allow_recursion"]
    for i, value in enumerate(written):
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            continue
        if net.prefixlen and not any(net.subnet_of(private) for private in NON_PUBLIC_NETWORKS
                                     if private.version == net.version):
            r.warn(f"dns.allow_recursion[{i}]", value,
                   "covers public addresses: BIND recurses for anyone in it who reaches a node; list only networks "
                   "you control")
    for version in (4, 6):
        nets = [ipaddress.ip_network(a) for a in acl if ipaddress.ip_network(a).version == version]
        if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(nets)):
            r.problem("dns.allow_recursion", written,
                      f"together these networks cover every IPv{version} address: an open resolver that anyone can "
                      "abuse; list only your own networks")


RULES = (_base_source, _boards, _node_names_and_addresses, _vip_addresses, _vip_prefer, _vip_ids, _query_timeout,
         _quorum, _recursion)


def _unique(r: Reader, what: str, keyed: list[tuple[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for key, value in keyed:
        if value is None:
            continue
        norm = str(value).lower()
        if norm in seen:
            r.problem(key, value, f"duplicate {what}: {seen[norm]} has it already; each must be unique")
        else:
            seen[norm] = key


def _in_subnet(r: Reader, key: str, value: Any, subnet: ipaddress.IPv4Network) -> None:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        return
    if addr not in subnet:
        r.problem(key, str(value), f"is outside the nodes' subnet {subnet} (network.prefix); use an address in it")
    elif addr in (subnet.network_address, subnet.broadcast_address):
        r.problem(key, str(value), f"is the network or broadcast address of {subnet}; use a host address")


def parse_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        # An unclosed quote or bracket is found only where the file ends or the next key begins: also name the
        # line where the construct started, which is where the mistake is.
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and (not mark or start.line != mark.line):
            problem += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(source, [f"YAML syntax error at{where}: {problem}"]) from None
    if data is None:
        raise ConfigError(source, ["the file is empty: start from examples/cluster.yaml"])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"the top level must be a mapping of sections, not {type(data).__name__}"])
    return data


def load(path: Path, base_dir: Path | None = None) -> Cluster:
    """Read and validate cluster.yaml; raise ConfigError naming every problem.

    Relative paths in it (secrets, base.path) resolve against base_dir, by default the file's own directory.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    return from_dict(parse_yaml(text, str(path)), path, base_dir)


def from_dict(data: dict, source: Path, base_dir: Path | None = None) -> Cluster:
    r = Reader(KEYS, source.parent if base_dir is None else base_dir)
    v = r.read(data)
    for rule in RULES:
        rule(r)
    if r.problems:
        raise ConfigError(str(source), r.in_file_order())

    def section(name: str, **values) -> dict:
        return {k.name: v[k.path] for k in KEYS if k.parent == name} | values

    path = v["base.path"] and (r.base_dir / v["base.path"]).expanduser()
    return Cluster(
        v["cluster.name"],
        Base(**section("base", path=path, sha256=v["base.sha256"] and v["base.sha256"].lower())),
        Network(**section("network")),
        Login(**section("login")),
        (r.base_dir / v["secrets.hacluster_password_file"]).expanduser(),
        (r.base_dir / v["secrets.corosync_key_file"]).expanduser(),
        tuple(Node(**n) for n in v["nodes"]),
        tuple(Vip(**vip) for vip in v["vips"]),
        Pacemaker(**section("pacemaker")),
        Dns(**section("dns")),
        source,
        tuple(r.warnings),
    )


def duration_seconds(value: str) -> float:
    m = DURATION_RE.fullmatch(value)
    assert m, value
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]
