#!/bin/bash -e
# Debian's pacemaker packages start a default one-node cluster ("debian", node1) at every boot. Keep it from
# starting before firstboot replaces it: `pcs cluster setup --enable` turns these back on with the real cluster.
systemctl disable corosync.service pacemaker.service
# pcsd carries `pcs host auth` and `cluster setup` between the nodes; BIND is owned by systemd, not Pacemaker.
systemctl enable pcsd.service named.service
