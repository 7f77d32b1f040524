#!/bin/bash -e
# Debian's corosync package ships a default one-node cluster ("debian", node1). Remove its configuration here, so
# no node ever starts it and firstboot has nothing to destroy (`pcs cluster destroy` took 50-210 s of the first
# boot under QEMU). dpkg keeps a deleted conffile deleted on upgrades.
rm -f /etc/corosync/corosync.conf
# Keep both services off until firstboot turns them on with the real cluster (its corosync.conf and authkey here).
systemctl disable corosync.service pacemaker.service
# pcsd carries `pcs host auth` and the cluster's files between the nodes; BIND is owned by systemd, not Pacemaker.
systemctl enable pcsd.service named.service
