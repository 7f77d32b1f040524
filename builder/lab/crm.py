"""What the cluster says: `crm_mon --output-as=xml` read into who is online, where each resource runs, what failed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from builder.lab.nodes import NodeConsole
from builder.lab.state import Lab


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
