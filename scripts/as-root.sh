# shellcheck shell=bash
# Sourced by the scripts here: they install packages, attach loop devices and chroot, so they run as root.
# A user with sudo gets the script re-run through it (keeping the cache location and CI flag); a root machine
# without sudo (a container, a CI runner) runs it as it is.
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null; then
		exec sudo --preserve-env=XDG_CACHE_HOME,CI "$0" "$@"
	fi
	echo "$0: run this as root (apt-get, loop devices, chroot); sudo is not installed to do it for you" >&2
	exit 2
fi
