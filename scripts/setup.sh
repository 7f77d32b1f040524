#!/usr/bin/env bash
# Set up a Debian machine to build, test and boot pibuild images: Debian tools (apt) and pibuild itself in .venv.
# Idempotent; runs as root (through sudo when started by another user).
set -euo pipefail
# shellcheck source=scripts/as-root.sh
. "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."


# Host tools, each named where pibuild uses it (builder/tools.py maps a missing tool to its package).
packages=(
	mmdebstrap qemu-user-static arch-test        # the debian base under qemu-user
	qemu-system-arm qemu-utils                    # smoke test and lab (qemu-system-arm has aarch64 too)
	mtools dosfstools e2fsprogs fdisk xz-utils    # image layout without a vfat module or partition scanning
	bmap-tools                                    # .bmap files and `pibuild flash`
	openssl                                       # the hacluster password hash
	bind9 bind9-utils bind9-dnsutils              # named-checkconf, dig, and BIND for the named2 agent's tests
	resource-agents libxml2-utils shellcheck      # ocf-tester, ra-api-1.dtd, script checks
	iproute2 iptables                             # network namespaces, bridges and taps for the lab
	dnsmasq-base kea-dhcp4-server isc-dhcp-server # `pibuild clients`: its DHCP snippets checked by the real servers
	cpio kmod zstd debian-archive-keyring         # the lab's armhf emulation kernel (builder/emulation.py)
	python3 python3-venv python3-pip
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# BIND is installed for its tools and for tests that start their own instance in a namespace; the host's
# own named must not run (no systemd on CI machines makes this a no-op there).
if command -v systemctl >/dev/null && systemctl is-enabled named >/dev/null 2>&1; then
	systemctl disable --now named >/dev/null 2>&1 || true
fi

# binfmt_misc is not mounted on a fresh machine; pibuild registers qemu-user itself, this only saves it a step.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
echo "setup done: pibuild is .venv/bin/pibuild"
