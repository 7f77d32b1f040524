# named-hooks.sh: what named-handoff and named-stopped share. Sourced by both, not run.

# BIND is stopping or stopped on purpose: the named2 agent's start fails at once while this marker exists, instead
# of waiting for an answer (or succeeding on a BIND about to go). named.service's ExecStartPre removes it.
mark_bind_stopped() {
	mkdir -p /run/pibuild && : >/run/pibuild/named-stopped
}

# Should BIND's stop move its addresses? Not when pacemaker.react_to_named_stop is off
# (/etc/pibuild/react-to-named-stop), and not while the system shuts down: Pacemaker moves the addresses
# itself as it stops.
reaction_wanted() {
	[ "$(cat /etc/pibuild/react-to-named-stop 2>/dev/null)" = yes ] || return 1
	case "$(systemctl is-system-running 2>/dev/null)" in
	stopping) return 1 ;;
	esac
	return 0
}

# Tell Pacemaker that every named2 resource started on this node failed. $1: syslog tag, $2: what happened.
# Succeeds when Pacemaker took at least one; none started here (no cluster yet, nothing on this node) fails.
fail_local_named2() {
	node=$(uname -n)
	told=1
	# The named2 agent knows which of its resources it started here (its state files).
	for rsc in $(OCF_ROOT=/usr/lib/ocf /usr/lib/ocf/resource.d/pibuild/named2 started-here); do
		logger -t "$1" "$2: telling Pacemaker that $rsc failed on $node"
		if crm_resource --fail --resource "$rsc" --node "$node" >/dev/null 2>&1; then
			told=0
		else
			logger -t "$1" "crm_resource --fail $rsc failed; the monitor will find BIND gone"
		fi
	done
	return "$told"
}
