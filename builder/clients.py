"""What the LAN's clients need to use the cluster: its floating addresses as their DNS servers, in resolv.conf, the
usual DHCP servers, a home router, NetworkManager and systemd-networkd/resolved, from clients/*.j2.

A VIP that is moving (or whose node just died) is silent for a moment, and a stub resolver decides what that
silence costs a lookup: glibc waits `timeout` seconds for the first nameserver before it asks the next, 5 s by
default, and forgets after every lookup that the first was silent. So the recommended resolver options matter as
much as the failover itself; the lab measures both (builder.lookups).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import jinja2

from builder import resources
from builder.config import Cluster

# glibc reads at most this many nameserver lines (MAXNS in resolv.h).
GLIBC_MAXNS = 3


@dataclass(frozen=True)
class ResolverOptions:
    timeout: int    # seconds to wait for one nameserver before asking the next
    attempts: int   # rounds over every nameserver before the lookup fails


# glibc's own (RES_TIMEOUT, RES_DFLRETRY): what a client without an options line does.
GLIBC_DEFAULTS = ResolverOptions(timeout=5, attempts=2)
# pibuild's recommendation. timeout 1 (glibc's smallest): a VIP in the middle of a failover costs a lookup at most
# about a second before the other VIP answers. attempts 3: with the shorter wait, one more round over both VIPs
# before a lookup fails, for a recursive answer that takes BIND longer than a second or two.
RECOMMENDED = ResolverOptions(timeout=1, attempts=3)
WHY = (f"glibc waits `timeout` s for a silent nameserver before it asks the next (default "
       f"{GLIBC_DEFAULTS.timeout}): {RECOMMENDED.timeout} s caps what a VIP in the middle of a failover costs a "
       f"lookup; {RECOMMENDED.attempts} rounds leave room for a slow recursive answer.")


@dataclass(frozen=True)
class Target:
    key: str        # `pibuild clients --only KEY`
    title: str      # the heading `pibuild clients` prints above it
    template: str   # under clients/


TARGETS = (
    Target("resolv.conf", "/etc/resolv.conf (glibc; also what NetworkManager or dhcpcd should end up writing)",
           "resolv.conf.j2"),
    Target("dnsmasq", "dnsmasq as the LAN's DHCP server", "dnsmasq.conf.j2"),
    Target("dhcpd", "ISC dhcpd", "dhcpd.conf.j2"),
    Target("kea", "Kea DHCPv4", "kea-dhcp4.json.j2"),
    Target("router", "a home router", "router.txt.j2"),
    Target("networkmanager", "NetworkManager (nmcli)", "networkmanager.sh.j2"),
    Target("networkd", "systemd-networkd", "networkd.conf.j2"),
    Target("resolved", "systemd-resolved", "resolved.conf.j2"),
)
KEYS = tuple(t.key for t in TARGETS)


def _context(cluster: Cluster, options: ResolverOptions | None) -> dict:
    nameservers = [v.address for v in cluster.vips]
    gateway = cluster.network.gateway
    return {
        "cluster": cluster,
        "nameservers": nameservers,
        "glibc_nameservers": nameservers[:GLIBC_MAXNS],
        "beyond_maxns": nameservers[GLIBC_MAXNS:],
        "maxns": GLIBC_MAXNS,
        "options": options,
        "why": WHY,
        # A router that is also BIND's forwarder must not forward to the cluster in turn.
        "forwards_to_gateway": any(ipaddress.ip_address(d) == ipaddress.ip_address(gateway)
                                   for d in cluster.network.dns),
    }


def render(cluster: Cluster, key: str, options: ResolverOptions | None = RECOMMENDED) -> str:
    """One target's text. `options=None` gives a resolv.conf without an options line (glibc's defaults)."""
    target = next(t for t in TARGETS if t.key == key)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
                             trim_blocks=True, lstrip_blocks=True)
    source = (resources.clients_dir() / target.template).read_text()
    return env.from_string(source).render(_context(cluster, options))


def resolv_conf(cluster: Cluster, options: ResolverOptions | None = RECOMMENDED) -> str:
    return render(cluster, "resolv.conf", options)


def render_all(cluster: Cluster) -> list[tuple[Target, str]]:
    return [(t, render(cluster, t.key)) for t in TARGETS]
