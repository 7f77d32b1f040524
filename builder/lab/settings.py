"""Live reconfiguration: the settings that decide how fast a VIP moves, applied to the running cluster."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields

from builder import config, plan, progress, resources
from builder.config import Cluster
from builder.lab.nodes import NodeConsole
from builder.lab.state import Lab


@dataclass(frozen=True)
class Settings:
    """What decides how fast a VIP moves; all of it can change on the running cluster."""

    name: str
    monitor_interval: str
    query_timeout: int
    react_to_named_stop: bool
    token_ms: int

    def describe(self) -> str:
        react = "on" if self.react_to_named_stop else "off"
        return (f"monitor {self.monitor_interval}, query_timeout {self.query_timeout}s, "
                f"named-stop reaction {react}, token {self.token_ms} ms")


# The pacemaker.* keys of cluster.yaml that a drill sets on the running cluster (a config without them drills with
# pibuild's defaults).
REACTION_KEYS = tuple(f.name for f in fields(Settings) if f.name != "name")


def settings_of(cluster: Cluster, name: str = "config") -> Settings:
    pm = cluster.pacemaker
    return Settings(name, pm.monitor_interval, pm.query_timeout, pm.react_to_named_stop, pm.token_ms)


def seed_settings() -> Settings:
    """The seed's reaction settings (`--compare-seed`): those of examples/seed.yaml, the bundled example with the
    seed's exact settings."""
    return settings_of(config.load(resources.seed_config()), "seed")


def apply_settings(lab: Lab, cons: dict[str, NodeConsole], s: Settings) -> None:
    """Reconfigure the running cluster: named2's monitor and query timeout, the reaction switch, corosync's token."""
    first = cons[lab.nodes[0].name]
    for monitor in plan.monitor_resources(lab.cluster):
        first.ok(f"crm_resource --resource {monitor} --set-parameter query_timeout "
                 f"--parameter-value {s.query_timeout}")
        xml = first.ok(f"cibadmin --query --xpath \"//primitive[@id='{monitor}']/operations/op[@name='monitor']\"")
        op_id = ET.fromstring(xml[xml.find("<"):]).get("id")
        first.ok(f"cibadmin --modify --xml-text '<op id=\"{op_id}\" interval=\"{s.monitor_interval}\"/>'")
    react = "yes" if s.react_to_named_stop else "no"
    for con in cons.values():
        con.ok(f"echo {react} > /etc/pibuild/react-to-named-stop")
        con.ok(f"sed -i -E 's/^([[:space:]]*token:).*/\\1 {s.token_ms}/' {plan.COROSYNC_CONF}")
    first.ok("corosync-cfgtool -R")
    got = first.ok("corosync-cmapctl -g runtime.config.totem.token").split("=")[-1].strip()
    progress.say(f"settings {s.name}: {s.describe()} (corosync runs token {got} ms)")
