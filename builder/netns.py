"""The lab's virtual LAN: one network namespace holding a bridge, one tap per node and the client's address.

Every address of the cluster's subnet exists only inside this namespace; nothing routes or NATs it to the host.
QEMU runs inside the namespace too (`exec_argv`), so it opens the taps there.
"""

from __future__ import annotations

import subprocess

from builder import tools

BRIDGE = "br0"


def exists(ns: str) -> bool:
    out = tools.run(["ip", "netns", "list"], capture=True).stdout.decode()
    return any(line.split()[0] == ns for line in out.splitlines() if line.strip())


def exec_argv(ns: str, argv: list[str]) -> list[str]:
    """argv run inside the namespace."""
    return ["ip", "netns", "exec", ns, *argv]


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return tools.run(["ip", "-n", ns, *args], capture=True, check=check)


def create(ns: str, taps: list[str], client_addresses: list[str], prefix: int) -> None:
    """The namespace, its bridge (carrying the client's addresses) and one tap per node on the bridge."""
    tools.run(["ip", "netns", "add", ns], capture=True)
    ip(ns, "link", "set", "lo", "up")
    ip(ns, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0")
    for tap in taps:
        ip(ns, "tuntap", "add", "dev", tap, "mode", "tap")
        ip(ns, "link", "set", tap, "master", BRIDGE, "up")
    for address in client_addresses:
        ip(ns, "addr", "add", f"{address}/{prefix}", "dev", BRIDGE)
    ip(ns, "link", "set", BRIDGE, "up")


def set_link(ns: str, tap: str, up: bool) -> None:
    """Plug or pull a node's cable."""
    ip(ns, "link", "set", tap, "up" if up else "down")


def delete(ns: str) -> None:
    """Remove the namespace with everything in it (bridge, taps, addresses). No error when it is already gone."""
    if exists(ns):
        tools.run(["ip", "netns", "delete", ns], capture=True)
