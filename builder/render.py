"""Which files a node's image receives: overlays/ and firstboot/ rendered from the config, with their modes.

`render_node()` is the one place that decides it; `pibuild render`, the image builder and the pi-gen export all
write what it returns.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from builder import plan, resources, secrets
from builder.config import Cluster
from builder.releases import RELEASES

# Which overlays/ layers a node receives: "common" always, the others chosen by the release table.
LAYER_FOR_BACKEND = {"dhcpcd": "dhcpcd", "networkmanager": "networkmanager"}
LAYER_FOR_HOOK = {"cloud-init": "cloud-init"}
LAYER_FOR_BIND_LOCALHOST_ZONE = "bind-localhost"

# Files that must not be readable by anyone but root (anything else: 0755 if executable in the source, else 0644).
PRIVATE = ("etc/NetworkManager/system-connections/*", "etc/pibuild/hacluster-password", "etc/dhcpcd.conf.secret")

# firstboot/ source file -> (path in the image, mode)
FIRSTBOOT_FILES = {
    "pibuild-firstboot.service": ("etc/systemd/system/pibuild-firstboot.service", 0o644),
    "pibuild-firstboot": ("usr/lib/pibuild/pibuild-firstboot", 0o755),
}
FIRSTBOOT_ENABLE_LINK = "etc/systemd/system/multi-user.target.wants/pibuild-firstboot.service"
# Unit links every node gets, whatever the base did: Raspberry Pi OS keeps ssh off and asks for a user name on its
# first boot (userconfig); pibuild configured the login user itself. Harmless where the base has neither.
UNIT_LINKS = {
    "etc/systemd/system/multi-user.target.wants/ssh.service": "/lib/systemd/system/ssh.service",
    "etc/systemd/system/userconfig.service": "/dev/null",
}


@dataclass(frozen=True)
class Entry:
    """One file or symlink of the node's tree; path is relative to the image's root."""

    path: str
    mode: int = 0o644
    data: bytes | None = None
    symlink: str | None = None


def layers(cluster: Cluster) -> list[str]:
    release = RELEASES[cluster.base.release]
    names = ["common", LAYER_FOR_BACKEND[release.network_backend]]
    names += [LAYER_FOR_HOOK[h] for h in release.first_boot_hooks if h in LAYER_FOR_HOOK]
    if release.bind_localhost_zone:
        names.append(LAYER_FOR_BIND_LOCALHOST_ZONE)
    return names


def _mode_for(path: str, source: Path) -> int:
    if any(fnmatch.fnmatch(path, pattern) for pattern in PRIVATE):
        return 0o600
    return 0o755 if os.access(source, os.X_OK) else 0o644


def render_node(cluster: Cluster, node_name: str, hacluster_password: str) -> list[Entry]:
    """Every file the node's image receives (beyond the cluster-wide stages), sorted by path."""
    node = cluster.node(node_name)
    release = RELEASES[cluster.base.release]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    context = {"cluster": cluster, "node": node, "release": release,
               "release_bind_interface_scan": release.bind_interface_scan}
    entries: dict[str, Entry] = {}

    overlays = resources.overlays_dir()
    for layer in layers(cluster):
        root = overlays / layer
        for source in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = source.relative_to(root).as_posix()
            if rel.endswith(".j2"):
                rel = rel[:-3]
                data = env.from_string(source.read_text()).render(context).encode()
            else:
                data = source.read_bytes()
            entries[rel] = Entry(rel, _mode_for(rel, source), data)

    firstboot = resources.firstboot_dir()
    for name, (rel, mode) in FIRSTBOOT_FILES.items():
        entries[rel] = Entry(rel, mode, (firstboot / name).read_bytes())
    entries[FIRSTBOOT_ENABLE_LINK] = Entry(FIRSTBOOT_ENABLE_LINK, 0o777,
                                           symlink="/" + FIRSTBOOT_FILES["pibuild-firstboot.service"][0])
    for link, target in UNIT_LINKS.items():
        entries[link] = Entry(link, 0o777, symlink=target)
    config_rel = plan.CONFIG_PATH.lstrip("/")
    firstboot_plan = json.dumps(plan.firstboot_plan(cluster, node.name), indent=2) + "\n"
    entries[config_rel] = Entry(config_rel, 0o644, firstboot_plan.encode())
    # Only the initiator needs the plaintext (for `pcs host auth`); firstboot deletes it once the cluster formed.
    if node.name == cluster.initiator.name:
        secret_rel = plan.PASSWORD_PATH.lstrip("/")
        entries[secret_rel] = Entry(secret_rel, 0o600, (hacluster_password + "\n").encode())
    # Every node: the cluster's corosync authkey, which firstboot installs for corosync. It is what lets a node whose
    # card was reflashed rejoin by itself, and what keeps a card of another cluster out.
    key_rel = plan.SHIPPED_AUTHKEY.lstrip("/")
    entries[key_rel] = Entry(key_rel, 0o400, secrets.corosync_authkey(
        cluster.corosync_key_file, cluster.name, [(n.name, n.address) for n in cluster.nodes]))
    return [entries[k] for k in sorted(entries)]


def write_tree(entries: list[Entry], dest: Path) -> None:
    """Write entries under dest with their modes (used by `render`, the image builder and the pi-gen export)."""
    for e in entries:
        target = dest / e.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if e.symlink is not None:
            target.symlink_to(e.symlink)
            continue
        # Create with the final mode so a secret is never briefly world-readable.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, e.mode)
        with os.fdopen(fd, "wb") as f:
            f.write(e.data or b"")
        os.chmod(target, e.mode)
