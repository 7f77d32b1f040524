"""The cluster plan: what firstboot does on a node, as data, in the pcs syntax of the node's release.

Rendered to /etc/pibuild/firstboot.json, so `pibuild render` shows every pcs command before anything is built,
and the firstboot script on the Pi only executes it.
"""

from __future__ import annotations

from builder.config import ADDRESS_AGENTS, CLONE_MONITOR, CLONE_MONITOR_IDS, Cluster, duration_seconds
from builder.releases import RELEASES

PCSD_PORT = 2224
STATE_DIR = "/var/lib/pibuild"
CONFIG_PATH = "/etc/pibuild/firstboot.json"
# Written by firstboot once the cluster formed (its unit's ConditionPathExists=!…): the node is done.
DONE_PATH = f"{STATE_DIR}/firstboot.done"
PASSWORD_PATH = "/etc/pibuild/hacluster-password"
# Where `pcs cluster setup --corosync_conf` writes on the initiator; firstboot moves it into place whole.
STAGED_COROSYNC_CONF = f"{STATE_DIR}/corosync.conf.new"
COROSYNC_AUTHKEY = "/etc/corosync/authkey"
COROSYNC_CONF = "/etc/corosync/corosync.conf"
# The cluster's corosync authkey as the image carries it (builder/secrets.py); firstboot installs it as
# COROSYNC_AUTHKEY, where `pcs cluster destroy` would have removed it.
SHIPPED_AUTHKEY = "/etc/pibuild/corosync-authkey"
NAMED2_AGENT = "ocf:pibuild:named2"
# named2's own query_timeout default: not spelled out in the plan (the seed's commands stay as they were).
NAMED2_QUERY_TIMEOUT = 5
# How often the address agent checks that a floating address is still configured: the seed's 10s whatever BIND's
# monitor interval. Only a hand-deleted address fails it, and IPaddr2's monitor costs most of a second emulated.
ADDRESS_MONITOR_INTERVAL = "10s"
# How strongly a VIP wants a node where the cloned BIND monitor runs: finite, so that where it runs nowhere (the last
# node's monitor failed, a false miss included) the VIP stays where it is instead of stopping (an address whose BIND
# is gone answers "port unreachable" at once; an absent one costs clients their timeout), and far above every
# location score (100 per node), so that wherever the monitor does run wins.
MONITOR_COLOCATION_SCORE = 100000


def monitor_resources(cluster: Cluster) -> list[str]:
    """The named2 primitives: the one cloned monitor, or one per VIP (the seed's groups)."""
    if cluster.pacemaker.layout == "clone":
        return [CLONE_MONITOR]
    return [vip.monitor for vip in cluster.vips]


def cib_commands(cluster: Cluster) -> list[list[str]]:
    """pcs arguments (after `pcs -f CIBFILE`) that build the whole configuration: the seed's steps 7, 9 and 10."""
    pcs = RELEASES[cluster.base.release].pcs
    pm = cluster.pacemaker
    monitor_timeout = f"{int(max(duration_seconds(pm.monitor_timeout), 1))}s"
    # One pcs call per step where pcs takes several settings at once: each call costs seconds on a Pi.
    cmds: list[list[str]] = [
        ["property", "set", f"stonith-enabled={str(pm.stonith_enabled).lower()}",
         f"no-quorum-policy={pm.no_quorum_policy}"],
    ]
    defaults = [f"migration-threshold={pm.migration_threshold}"]
    if pm.failback == "auto":
        # The fail count expires, so the location scores pull the VIP home once BIND there answers again.
        defaults.append(f"failure-timeout={pm.failure_timeout}")
    cmds.append([*pcs.resource_defaults, *defaults])
    query = [] if pm.query_timeout == NAMED2_QUERY_TIMEOUT else [f"query_timeout={pm.query_timeout}"]

    def named2(rid: str) -> list[str]:
        return ["resource", "create", rid, NAMED2_AGENT, f"monitor_request={pm.monitor_request}",
                f"named_user={pm.named_user}", "named=/usr/sbin/named", *query,
                "op", "monitor", f"interval={pm.monitor_interval}", f"timeout={monitor_timeout}"]

    def vip_address(vip) -> list[str]:
        # pibuild's agent migrates: a planned move (BIND stopped, failback) adds the address on the new node
        # before the old one lets go, so a client never meets a silent address (which costs glibc its timeout).
        migrate = ["meta", "allow-migrate=true"] if pm.address_agent == "vip" else []
        return ["resource", "create", vip.name, ADDRESS_AGENTS[pm.address_agent], f"ip={vip.address}",
                f"cidr_netmask={cluster.network.prefix}", f"nic={cluster.network.interface}",
                "op", "monitor", f"interval={ADDRESS_MONITOR_INTERVAL}", *migrate]

    if pm.layout == "clone":
        # BIND is watched on every node all the time, so a failover only moves an address: no monitor has to
        # start (and wait for BIND) on the node taking over.
        clone = CLONE_MONITOR_IDS[1]
        cmds.append([*named2(CLONE_MONITOR), "clone"])
        for vip in cluster.vips:
            cmds.append(vip_address(vip))
            # Where the monitor runs, i.e. where BIND answered: a failed monitor sends the address to a node
            # whose BIND answers, if there is one.
            cmds.append(["constraint", "colocation", "add", vip.name, "with", clone, str(MONITOR_COLOCATION_SCORE)])
            # When both start together (boot, failback) the address waits for BIND's first answer. Optional: a
            # monitor failing elsewhere must not restart the address.
            cmds.append(["constraint", "order", "start", clone, "then", "start", vip.name, "kind=Optional"])
    else:
        for vip in cluster.vips:
            # The monitor first: the group brings the floating address up only where BIND answers.
            cmds.append([*named2(vip.monitor), *pcs.group_keyword, vip.group])
            cmds.append([*vip_address(vip), *pcs.group_keyword, vip.group])
    for vip in cluster.vips:
        cmds.append(["constraint", "location", vip.name, "prefers",
                     *[f"{node}={score}" for node, score in vip.scores()]])
    return cmds


def firstboot_plan(cluster: Cluster, node_name: str) -> dict:
    """Everything the firstboot script of one node needs, JSON-serialisable."""
    release = RELEASES[cluster.base.release]
    node = cluster.node(node_name)
    initiator = cluster.initiator
    setup = ["pcs", "cluster", "setup", cluster.name]
    for n in cluster.nodes:
        setup += [n.name, f"addr={n.address}"]
    # Local mode: no pcsd is asked anything; every node makes the same file (no random cluster UUID), so a node
    # needs no other node to have it (see firstboot/pibuild-firstboot).
    setup += ["totem", f"token={cluster.pacemaker.token_ms}", *release.pcs.setup_reproducible,
              "--corosync_conf", STAGED_COROSYNC_CONF, "--overwrite"]
    return {
        "cluster": cluster.name,
        "node": node.name,
        # Not used by firstboot: what `pibuild smoke --board` boots the image as.
        "model": node.model,
        "initiator": initiator.name,
        "is_initiator": node.name == initiator.name,
        "nodes": [{"name": n.name, "address": n.address} for n in cluster.nodes],
        "resources": [*(v.name for v in cluster.vips), *monitor_resources(cluster)],
        "pcsd_port": PCSD_PORT,
        "password_file": PASSWORD_PATH,
        "staged_corosync_conf": STAGED_COROSYNC_CONF,
        "shipped_authkey": SHIPPED_AUTHKEY,
        "state_dir": STATE_DIR,
        "done_file": DONE_PATH,
        "pcs_version": release.pcs.version,
        "commands": {
            "destroy": ["pcs", "cluster", "destroy", *release.pcs.destroy_confirm],
            "auth": ["pcs", "host", "auth", *[n.name for n in cluster.nodes], "-u", "hacluster"],
            "setup": setup,
            # What `pcs cluster enable` and `pcs cluster start` run, as one local call on each node.
            "start": ["systemctl", "enable", "--now", "corosync.service", "pacemaker.service"],
            "cib": cib_commands(cluster),
        },
    }
