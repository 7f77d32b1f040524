"""The lab's state on disk: where a lab lives, its nodes' sockets, logs and pidfiles, and the client's address.

Everything of a lab lives under STATE_ROOT/<cluster>/ (one directory per node), so that any later `pibuild lab`
process finds a running lab again, and `lab down` removes it all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from builder.config import Cluster
from builder.errors import PibuildError

STATE_ROOT = Path("/run/pibuild/lab")


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

    @property
    def image_file(self) -> Path:
        """Names the image the node boots (a new card is that image again)."""
        return self.dir / "image.path"


@dataclass(frozen=True)
class Lab:
    cluster: Cluster
    dir: Path
    ns: str
    nodes: tuple[LabNode, ...]
    client: tuple[str, ...]

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    @property
    def prober_pidfile(self) -> Path:
        return self.dir / "probe.pid"


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
