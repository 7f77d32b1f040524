"""`pibuild lab`: the whole cluster in QEMU on a virtual LAN, and failover drills that measure the outage.

Every node boots its image through a throw-away qcow2 overlay (builder.qemu, as `pibuild smoke`), detached inside
the lab's network namespace, with its serial console on a unix socket (any later `lab` process can reattach) and a
pidfile. By concern:

    state     where a lab lives on disk (STATE_ROOT/<cluster>/), its nodes, the client's address
    nodes     each node's VM (start, power, pid) and a root shell on its serial console
    crm       crm_mon's XML read into who is online and where each resource runs
    client    builder.probe on the LAN: does each VIP answer, and the samples of a drill
    updown    `lab up` (until the cluster formed and every VIP answers), `lab down`, `lab status`
    settings  the reaction settings, applied to the running cluster
    drills    the scenarios and the drill runner (adding a drill: see its docstring)
    report    the results table

The names below are the lab's face for the command line, bench/ and the tests.
"""

from builder.lab.crm import ClusterState, parse_crm_mon
from builder.lab.drills import DEFAULT_SCENARIOS, SCENARIOS, Scenario, drill
from builder.lab.report import rejoin_table, table
from builder.lab.settings import REACTION_KEYS, Settings, seed_settings, settings_of
from builder.lab.state import Lab, lab_for
from builder.lab.updown import LabExists, Status, check_host, down, require_up, status, up

__all__ = ["DEFAULT_SCENARIOS", "ClusterState", "Lab", "LabExists", "REACTION_KEYS", "SCENARIOS", "Scenario",
           "Settings", "Status", "check_host", "down", "drill", "lab_for", "parse_crm_mon", "rejoin_table",
           "require_up", "seed_settings", "settings_of", "status", "table", "up"]
