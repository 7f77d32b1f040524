"""cluster.yaml: load it into immutable, typed objects and find every problem at once.

Each rule names the key path, the bad value and what would be valid. `load()` raises ConfigError listing them all.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.errors import ConfigError
from builder.releases import ARCHES, MODELS, RELEASES

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


@dataclass(frozen=True)
class Base:
    source: str
    release: str
    arch: str
    url: str | None = None
    sha256: str | None = None
    path: Path | None = None
    mirror: str = DEFAULT_MIRROR
    # debian base: also the -updates and -security suites.
    updates: bool = True


@dataclass(frozen=True)
class Network:
    interface: str
    prefix: int
    gateway: str
    dns: tuple[str, ...]


@dataclass(frozen=True)
class Login:
    user: str
    ssh_authorized_keys: tuple[str, ...] = ()
    password_hash: str | None = None


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


@dataclass(frozen=True)
class Pacemaker:
    stonith_enabled: bool = False
    # load() chooses by node count (default_no_quorum_policy); this is the two-node value.
    no_quorum_policy: str = "ignore"
    migration_threshold: int = 1
    # pibuild's default; the seed (and the bundled example) monitor every 10s.
    monitor_interval: str = "2s"
    monitor_timeout: str = "20s"
    failback: str = "manual"
    failure_timeout: str = "60s"
    named_user: str = "bind"
    monitor_request: str = "localhost"
    # corosync's totem token (ms): how long a silent node takes to be declared lost (plus consensus, 1.2 × token).
    # pibuild's default fits a LAN; the seed ran corosync's 3000.
    token_ms: int = 1000
    # Seconds the named2 monitor waits for each of BIND's answers (the agent's own default is 5): a frozen BIND
    # is found within monitor_interval + 2 x query_timeout (two unanswered queries in a row). Not 2: in the lab a
    # busy survivor's BIND (taking over both addresses while the other node rejoined) missed two 2 s queries in a
    # row, and its own monitor failing would have left no node for the addresses.
    query_timeout: int = 3
    # named.service's stop tells Pacemaker at once (/usr/lib/pibuild/named-stopped) instead of waiting for the
    # next monitor. The seed had no such reaction.
    react_to_named_stop: bool = True
    # How BIND's health and the floating addresses are tied (builder/plan.py):
    #   clone: one named2 monitor runs on every node (a clone); each VIP may run only where it reports BIND
    #          serving, so a failover moves the address alone (pibuild's default);
    #   group: the seed's, one group per VIP of its own named2 monitor and the address, which move together.
    layout: str = "clone"
    # vip: pibuild's address agent, a few processes per start; IPaddr2: resource-agents' (the seed's), about
    # thirty, which cost 1-3 s of every failover on an emulated lab node.
    address_agent: str = "vip"


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


# The keys each section accepts (unknown keys are reported: a typo must not silently fall back to a default).
KNOWN_KEYS = {
    "": ("cluster", "base", "network", "login", "secrets", "nodes", "vips", "pacemaker", "dns"),
    "cluster": ("name",),
    "base": ("source", "release", "arch", "url", "sha256", "path", "mirror", "updates"),
    "network": ("interface", "prefix", "gateway", "dns"),
    "login": ("user", "ssh_authorized_keys", "password_hash"),
    "secrets": ("hacluster_password_file", "corosync_key_file"),
    "node": ("name", "address", "model"),
    "vip": ("name", "address", "prefer", "group", "monitor"),
    "pacemaker": ("stonith_enabled", "no_quorum_policy", "migration_threshold", "monitor_interval", "monitor_timeout",
                  "failback", "failure_timeout", "named_user", "monitor_request", "token_ms",
                  "query_timeout", "react_to_named_stop", "layout", "address_agent"),
    "dns": ("allow_recursion",),
}


class _Reader:
    """Reads values by key path, recording a problem instead of raising, so every problem is reported at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []
        # Keys whose value holds a control character: reported once, as that, not again by the key's own rule.
        self.unprintable: set[str] = set()

    def problem(self, key: str, value: Any, fix: str) -> None:
        if key in self.unprintable:
            return
        shown = "missing" if value is _MISSING else repr(value)
        self.problems.append(f"{key}: {shown}: {fix}")

    def warn(self, key: str, value: Any, what: str) -> None:
        self.warnings.append(f"{key}: {value!r}: {what}")

    def control_characters(self, value: Any, key: str = "") -> None:
        """Refuse a control character anywhere (a line break in a name would reach /etc/hosts and pcs's argv)."""
        if isinstance(value, dict):
            for k, v in value.items():
                self.control_characters(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.control_characters(v, f"{key}[{i}]")
        elif isinstance(value, str):
            bad = next((c for c in value if _is_control(c)), None)
            if bad is not None:
                self.problem(key, value, f"holds a control character ({_describe(bad)}) at position "
                                         f"{value.index(bad) + 1}: remove it (a value is one line of printable text)")
                self.unprintable.add(key)

    def section(self, data: dict, key: str, known: str, required: bool = True) -> dict:
        value = data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.problem(key, _MISSING, f"add a '{key}:' section")
            return {}
        if not isinstance(value, dict):
            self.problem(key, value, "must be a mapping of keys")
            return {}
        self.unknown_keys(value, key, known)
        return value

    def unknown_keys(self, value: dict, path: str, known: str) -> None:
        for k in value:
            if k not in KNOWN_KEYS[known]:
                self.problem(f"{path}.{k}" if path else str(k), value[k],
                             f"unknown key; known keys here: {', '.join(KNOWN_KEYS[known])}")

    def get(self, data: dict, path: str, key: str, kind: type | tuple, default: Any = None,
            required: bool = False, what: str = "") -> Any:
        value = data.get(key, _MISSING)
        full = f"{path}.{key}" if path else key
        if value is _MISSING or value is None:
            if required:
                self.problem(full, _MISSING, f"required{': ' + what if what else ''}")
            return default
        # YAML's true/false are ints in Python; never accept one where a number is wanted, or the reverse.
        if kind is int and isinstance(value, bool):
            self.problem(full, value, f"must be a whole number{': ' + what if what else ''}")
            return default
        if not isinstance(value, kind):
            name = {str: "a string", int: "a whole number", bool: "true or false", list: "a list"}.get(kind, str(kind))
            self.problem(full, value, f"must be {name}{': ' + what if what else ''}")
            return default
        return value

    def choice(self, data: dict, path: str, key: str, choices, default: Any = None, required: bool = False):
        value = self.get(data, path, key, str, default, required, what="one of " + ", ".join(choices))
        if value is not None and value not in choices:
            self.problem(f"{path}.{key}", value, f"must be one of {', '.join(choices)}")
            return default
        return value

    def ipv4(self, value: Any, key: str) -> str | None:
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            self.problem(key, value, "must be an IPv4 address such as 192.168.100.1")
            return None


def _is_control(char: str) -> bool:
    # Cc: C0 (line breaks, tab, escape, NUL), DEL and C1; also Unicode's own line and paragraph separators.
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")


def _describe(char: str) -> str:
    names = {"\n": "a line break, \\n", "\r": "a carriage return, \\r", "\t": "a tab, \\t"}
    return names.get(char, f"U+{ord(char):04X}")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


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
    r = _Reader()
    r.control_characters(data)
    r.unknown_keys(data, "", "")
    base_dir = source.parent if base_dir is None else base_dir

    # cluster
    sec = r.section(data, "cluster", "cluster")
    name = r.get(sec, "cluster", "name", str, required=True)
    if name is not None and not CLUSTER_NAME_RE.fullmatch(name):
        r.problem("cluster.name", name, "use 1-32 letters, digits, '-' or '_', starting with a letter or digit")

    # base
    sec = r.section(data, "base", "base")
    source_kind = r.choice(sec, "base", "source", SOURCES, required=True)
    release = r.choice(sec, "base", "release", tuple(RELEASES), required=True)
    arch = r.choice(sec, "base", "arch", tuple(ARCHES), required=True)
    url = r.get(sec, "base", "url", str)
    sha256 = r.get(sec, "base", "sha256", str)
    if sha256 is not None and not SHA256_RE.fullmatch(sha256.lower()):
        r.problem("base.sha256", sha256, "must be 64 hexadecimal digits (sha256sum's output)")
    if url is not None and not URL_RE.fullmatch(url):
        r.problem("base.url", url, "must be an http://, https:// or file:// URL")
    mirror = r.get(sec, "base", "mirror", str, DEFAULT_MIRROR)
    if not URL_RE.fullmatch(mirror):
        r.problem("base.mirror", mirror, "must be an http://, https:// or file:// URL of a Debian archive")
    base_path = r.get(sec, "base", "path", str)
    resolved_path = None
    if source_kind == "file":
        if base_path is None:
            r.problem("base.path", _MISSING, "required when base.source is 'file': the .img or .img.xz to start from")
        else:
            resolved_path = (base_dir / base_path).expanduser()
            if not base_path.endswith((".img", ".img.xz")):
                r.problem("base.path", base_path, "must name a .img or .img.xz file")
            elif not resolved_path.is_file():
                r.problem("base.path", base_path, f"no such file ({resolved_path})")
    elif base_path is not None:
        r.problem("base.path", base_path, "only used with base.source: file; remove it or set source: file")
    for key, value in (("url", url), ("sha256", sha256)):
        if value is not None and source_kind not in (None, "raspios"):
            r.problem(f"base.{key}", value, "only used with base.source: raspios")
    updates = r.get(sec, "base", "updates", bool, True)
    base = Base(source_kind or "debian", release or "bookworm", arch or "armhf", url, sha256 and sha256.lower(),
                resolved_path, mirror, updates)

    # network
    sec = r.section(data, "network", "network")
    interface = r.get(sec, "network", "interface", str, "eth0")
    if not IFNAME_RE.fullmatch(interface):
        r.problem("network.interface", interface, "must be an interface name of at most 15 characters, e.g. eth0")
    prefix = r.get(sec, "network", "prefix", int, 24)
    if not 8 <= prefix <= 30:
        r.problem("network.prefix", prefix, "must be between 8 and 30 (24 means 255.255.255.0)")
        prefix = 24
    gateway = r.get(sec, "network", "gateway", str, required=True, what="the router's address")
    gateway = r.ipv4(gateway, "network.gateway") if gateway is not None else None
    dns_raw = r.get(sec, "network", "dns", list, [])
    dns = tuple(a for i, v in enumerate(dns_raw) if (a := r.ipv4(v, f"network.dns[{i}]")))
    if not dns_raw:
        r.problem("network.dns", dns_raw or _MISSING, "list at least one upstream resolver (BIND forwards to it)")

    # login
    sec = r.section(data, "login", "login")
    user = r.get(sec, "login", "user", str, required=True, what="the account you log in with")
    if user is not None and not USER_RE.fullmatch(user):
        r.problem("login.user", user, "use lower-case letters, digits, '-' or '_', starting with a letter")
    elif user in RESERVED_USERS:
        r.problem("login.user", user, "this account already exists in the image; choose another name, e.g. admin")
    keys = r.get(sec, "login", "ssh_authorized_keys", list, [])
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not SSH_KEY_RE.fullmatch(key.strip()):
            r.problem(f"login.ssh_authorized_keys[{i}]", key,
                      "must be one public key line, e.g. 'ssh-ed25519 AAAA… you@host' (the .pub file's content)")
    password_hash = r.get(sec, "login", "password_hash", str)
    if password_hash is not None and not CRYPT_RE.fullmatch(password_hash):
        r.problem("login.password_hash", password_hash,
                  "must be a crypt hash, e.g. the output of `mkpasswd -m yescrypt` or `openssl passwd -6`")
    login = Login(user or "admin", tuple(k.strip() for k in keys if isinstance(k, str)), password_hash)

    # secrets
    sec = r.section(data, "secrets", "secrets", required=False)
    secret = r.get(sec, "secrets", "hacluster_password_file", str, "secrets/hacluster")
    secret_path = (base_dir / secret).expanduser()
    key_path = (base_dir / r.get(sec, "secrets", "corosync_key_file", str, "secrets/corosync-key")).expanduser()

    # nodes
    nodes: list[Node] = []
    raw_nodes = r.get(data, "", "nodes", list, [], required=True, what="at least two nodes")
    if raw_nodes is not None and len(raw_nodes) < 2:
        r.problem("nodes", raw_nodes, "a cluster needs at least two nodes")
    for i, raw in enumerate(raw_nodes or []):
        key = f"nodes[{i}]"
        if not isinstance(raw, dict):
            r.problem(key, raw, "must be a mapping with name, address and model")
            continue
        r.unknown_keys(raw, key, "node")
        n_name = r.get(raw, key, "name", str, required=True, what="the node's hostname")
        if n_name is not None and not HOSTNAME_RE.fullmatch(n_name):
            r.problem(f"{key}.name", n_name,
                      "must be a hostname: lower-case letters, digits and '-', at most 63, no '-' at either end")
        elif n_name is not None and n_name.isdigit():
            r.problem(f"{key}.name", n_name, "a hostname cannot be all digits")
        addr = r.get(raw, key, "address", str, required=True)
        addr = r.ipv4(addr, f"{key}.address") if addr is not None else None
        model = r.get(raw, key, "model", str, required=True, what="the board, e.g. pi3b")
        if model is not None and model not in MODELS:
            r.problem(f"{key}.model", model, f"unknown model; known: {', '.join(MODELS)}")
        elif model is not None and arch is not None:
            m = MODELS[model]
            if arch not in m.arches:
                r.problem(f"{key}.model", model,
                          f"a {m.description} cannot run {arch}; use base.arch: {m.arches[0]} or another board")
            elif m.armv6 and source_kind in ("debian",):
                r.problem(f"{key}.model", model,
                          f"a {m.description} is ARMv6, which Debian's armhf cannot run; use base.source: raspios")
        if n_name and addr:
            nodes.append(Node(n_name, addr, model or "pi3b"))

    _unique(r, "nodes", "name", [(f"nodes[{i}].name", n.get("name")) for i, n in _mappings(raw_nodes)])
    _unique(r, "nodes", "address", [(f"nodes[{i}].address", n.get("address")) for i, n in _mappings(raw_nodes)])
    node_names = {n.name for n in nodes}
    # A name refused for a control character ('dns-pm02\n') is not also news as an unknown node in `prefer`.
    names_refused = any(re.fullmatch(r"nodes\[\d+\]\.name", key) for key in r.unprintable)

    # the subnet every address must sit in
    subnet = None
    if nodes:
        subnet = ipaddress.ip_network(f"{nodes[0].address}/{prefix}", strict=False)
        for i, raw in _mappings(raw_nodes):
            _in_subnet(r, f"nodes[{i}].address", raw.get("address"), subnet)
        if gateway:
            _in_subnet(r, "network.gateway", gateway, subnet)
            for i, raw in _mappings(raw_nodes):
                if raw.get("address") == gateway:
                    r.problem(f"nodes[{i}].address", gateway, "is the gateway's address; give the node its own")

    # vips
    vips: list[Vip] = []
    raw_vips = r.get(data, "", "vips", list, [], required=True, what="the floating addresses clients use")
    if raw_vips is not None and not raw_vips:
        r.problem("vips", raw_vips, "list at least one floating address: without one the cluster protects nothing")
    node_addresses = {n.address for n in nodes}
    for i, raw in enumerate(raw_vips or []):
        key = f"vips[{i}]"
        if not isinstance(raw, dict):
            r.problem(key, raw, "must be a mapping with name, address and prefer")
            continue
        r.unknown_keys(raw, key, "vip")
        v_name = r.get(raw, key, "name", str, required=True)
        group = r.get(raw, key, "group", str, f"rg-{i + 1:02d}")
        monitor = r.get(raw, key, "monitor", str, f"monitor-named{i + 1}")
        for sub, ident in (("name", v_name), ("group", group), ("monitor", monitor)):
            if ident is not None and not PACEMAKER_ID_RE.fullmatch(ident):
                r.problem(f"{key}.{sub}", ident, "must start with a letter or '_' and hold only letters, digits, '.-_'")
        addr = r.get(raw, key, "address", str, required=True)
        addr = r.ipv4(addr, f"{key}.address") if addr is not None else None
        if addr and subnet:
            _in_subnet(r, f"{key}.address", addr, subnet)
        if addr in node_addresses:
            r.problem(f"{key}.address", addr, "is a node's own address; a floating address must be unused")
        if addr and addr == gateway:
            r.problem(f"{key}.address", addr, "is the gateway's address; a floating address must be unused")
        prefer = r.get(raw, key, "prefer", list, [], required=True, what="the nodes to run on, most preferred first")
        if isinstance(raw.get("prefer"), list) and not prefer:
            r.problem(f"{key}.prefer", prefer, "list at least one node, most preferred first")
        for j, p in enumerate(prefer):
            if not isinstance(p, str):
                r.problem(f"{key}.prefer[{j}]", p, "must be a node's name")
            elif p not in node_names and nodes and not names_refused:
                r.problem(f"{key}.prefer[{j}]", p, f"unknown node; nodes are: {', '.join(sorted(node_names))}")
        if len(set(map(str, prefer))) != len(prefer):
            r.problem(f"{key}.prefer", prefer, "lists a node twice")
        if v_name and addr and group and monitor:
            vips.append(Vip(v_name, addr, tuple(map(str, prefer)), group, monitor))
    _unique(r, "vips", "address", [(f"vips[{i}].address", v.get("address")) for i, v in _mappings(raw_vips)])
    ids = [(f"vips[{i}].{k}", ident) for i, v in enumerate(vips) for k, ident in
           (("name", v.name), ("group", v.group), ("monitor", v.monitor))]
    _unique(r, "vips", "name, group or monitor", ids)
    for key, ident in ids:
        if ident in CLONE_MONITOR_IDS:
            r.problem(key, ident, f"is the id of pibuild's cloned BIND monitor ({', '.join(CLONE_MONITOR_IDS)}); "
                                  "choose another name")

    # pacemaker
    sec = r.section(data, "pacemaker", "pacemaker", required=False)
    d = Pacemaker()
    pm = Pacemaker(
        stonith_enabled=r.get(sec, "pacemaker", "stonith_enabled", bool, d.stonith_enabled),
        no_quorum_policy=r.choice(sec, "pacemaker", "no_quorum_policy", NO_QUORUM_POLICIES,
                                  default_no_quorum_policy(len(nodes))),
        migration_threshold=r.get(sec, "pacemaker", "migration_threshold", int, d.migration_threshold),
        monitor_interval=_duration(r, sec, "monitor_interval", d.monitor_interval),
        monitor_timeout=_duration(r, sec, "monitor_timeout", d.monitor_timeout),
        failback=r.choice(sec, "pacemaker", "failback", FAILBACK, d.failback),
        failure_timeout=_duration(r, sec, "failure_timeout", d.failure_timeout),
        named_user=r.get(sec, "pacemaker", "named_user", str, d.named_user),
        monitor_request=r.get(sec, "pacemaker", "monitor_request", str, d.monitor_request),
        token_ms=r.get(sec, "pacemaker", "token_ms", int, d.token_ms),
        query_timeout=r.get(sec, "pacemaker", "query_timeout", int, d.query_timeout),
        react_to_named_stop=r.get(sec, "pacemaker", "react_to_named_stop", bool, d.react_to_named_stop),
        layout=r.choice(sec, "pacemaker", "layout", LAYOUTS, d.layout),
        address_agent=r.choice(sec, "pacemaker", "address_agent", tuple(ADDRESS_AGENTS), d.address_agent),
    )
    if not USER_RE.fullmatch(pm.named_user):
        r.problem("pacemaker.named_user", pm.named_user, "must be the user BIND runs as (Debian's is 'bind')")
    if not DNS_NAME_RE.fullmatch(pm.monitor_request):
        r.problem("pacemaker.monitor_request", pm.monitor_request,
                  "must be a DNS name BIND answers, e.g. localhost (the seed's)")
    if pm.migration_threshold < 1:
        r.problem("pacemaker.migration_threshold", pm.migration_threshold,
                  "must be 1 or more (the seed uses 1: fail over at the first failure)")
    if not 500 <= pm.token_ms <= 60000:
        r.problem("pacemaker.token_ms", pm.token_ms, "must be between 500 and 60000 milliseconds")
    # A monitor may send two queries (named2: one unanswered query is not a dead BIND); both must fit.
    if not 1 <= pm.query_timeout <= duration_seconds(pm.monitor_timeout) / 3:
        r.problem("pacemaker.query_timeout", pm.query_timeout,
                  f"must be at least 1 second and at most a third of monitor_timeout ({pm.monitor_timeout}): "
                  "a monitor may wait for two queries")
    if pm.no_quorum_policy == "ignore" and len(nodes) >= 3:
        r.problem("pacemaker.no_quorum_policy", "ignore",
                  f"with {len(nodes)} nodes a node cut off from the others would keep serving the VIPs the majority "
                  "also took over (the same address twice on the LAN); remove the key (the default for three or "
                  "more nodes is stop) or set stop")
    if pm.stonith_enabled:
        r.problem("pacemaker.stonith_enabled", True,
                  "pibuild configures no fencing device, and Pacemaker starts no resource with stonith on and no "
                  "device; set it to false")

    # dns
    sec = r.section(data, "dns", "dns", required=False)
    default_acl = [str(subnet)] if subnet else []
    acl_raw = r.get(sec, "dns", "allow_recursion", list, default_acl)
    acl = []
    for i, value in enumerate(acl_raw):
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            r.problem(f"dns.allow_recursion[{i}]", value, "must be a network such as 192.168.100.0/24")
            continue
        if net.prefixlen == 0:
            r.problem(f"dns.allow_recursion[{i}]", value,
                      "would make an open resolver that anyone can abuse; list your own networks")
            continue
        if not any(net.subnet_of(private) for private in NON_PUBLIC_NETWORKS if private.version == net.version):
            r.warn(f"dns.allow_recursion[{i}]", value,
                   "covers public addresses: BIND recurses for anyone in it who reaches a node; list only networks "
                   "you control")
        acl.append(str(net))
    for version in (4, 6):
        nets = [ipaddress.ip_network(a) for a in acl if ipaddress.ip_network(a).version == version]
        if any(n.prefixlen == 0 for n in ipaddress.collapse_addresses(nets)):
            r.problem("dns.allow_recursion", acl_raw,
                      f"together these networks cover every IPv{version} address: an open resolver that anyone can "
                      "abuse; list only your own networks")

    if r.problems:
        raise ConfigError(str(source), r.problems)
    return Cluster(name, base, Network(interface, prefix, gateway, dns), login, secret_path, key_path,
                   tuple(nodes), tuple(vips), pm, Dns(tuple(acl)), source, tuple(r.warnings))


def _mappings(items) -> list[tuple[int, dict]]:
    return [(i, x) for i, x in enumerate(items or []) if isinstance(x, dict)]


def _unique(r: _Reader, section: str, what: str, keyed: list[tuple[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for key, value in keyed:
        if value is None:
            continue
        norm = str(value).lower()
        if norm in seen:
            r.problem(key, value, f"duplicate {what}: {seen[norm]} has it already; each must be unique")
        else:
            seen[norm] = key


def _in_subnet(r: _Reader, key: str, value: Any, subnet: ipaddress.IPv4Network) -> None:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError:
        return
    if addr not in subnet:
        r.problem(key, str(value), f"is outside the nodes' subnet {subnet} (network.prefix); use an address in it")
    elif addr in (subnet.network_address, subnet.broadcast_address):
        r.problem(key, str(value), f"is the network or broadcast address of {subnet}; use a host address")


def _duration(r: _Reader, sec: dict, key: str, default: str) -> str:
    raw = value = sec.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}s"
    if not isinstance(value, str) or not DURATION_RE.fullmatch(value):
        # Name the value as written (0, not the '0s' it was read as).
        r.problem(f"pacemaker.{key}", raw, "must be a duration such as 10s, 500ms or 2min")
        return default
    return value


def duration_seconds(value: str) -> float:
    m = DURATION_RE.fullmatch(value)
    assert m, value
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]
