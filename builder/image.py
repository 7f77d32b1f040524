"""Disk images: the cluster-wide image (base + stages, cached) and each node's copy of it.

Layout as Raspberry Pi OS Lite: MBR, FAT32 `bootfs` at 4 MiB, ext4 `rootfs` after it, PARTUUIDs from the disk
identifier. The boot partition is written with mtools (these machines have no vfat module), the root partition
with `mke2fs -d` or through an offset loop device (no partition scanning either).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from builder import (
    __version__,
    base,
    cache,
    chroot,
    cib,
    mounts,
    plan,
    progress,
    render,
    resources,
    secrets,
    stages,
    tools,
)
from builder.config import Cluster
from builder.errors import NeedsRoot, PibuildError
from builder.layout import SECTOR, read_layout
from builder.releases import RELEASES

MIB = 1 << 20
BOOT_START = 4 * MIB
BOOT_SIZE = 512 * MIB
# Free space left in the root file system of the cached image (it grows to the card on first boot anyway).
ROOT_HEADROOM = 384 * MIB
# Raspberry Pi OS images grow by this much before a raspios/file base gets the cluster packages.
RASPIOS_GROWTH = 1024 * MIB
# Bump when make_image() or the cluster-image steps in this file change what they produce (base.py, stages.py and
# chroot.py are part of the cache key by their source).
CLUSTER_IMAGE_FORMAT = 1
HOST_TOOLS = ("mmdebstrap", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "e2fsck", "resize2fs", "losetup", "bmaptool")


# Tests set this to a phase name to make that phase fail at its end, proving that a failure anywhere cleans up.
INJECT_FAILURE_ENV = "PIBUILD_TEST_FAIL_IN_PHASE"


@contextlib.contextmanager
def phase(what: str, tool_draws_progress: bool = False) -> Iterator[progress.Phase]:
    """A progress phase of the build, which a test can make fail at its end (INJECT_FAILURE_ENV)."""
    with progress.phase(what, tool_draws_progress) as ph:
        yield ph
        inject = os.environ.get(INJECT_FAILURE_ENV)
        if inject and inject in what:
            raise PibuildError(f"{what}: failure injected by {INJECT_FAILURE_ENV} (a test)")


def check_host() -> None:
    if os.geteuid() != 0:
        raise NeedsRoot("building an image")
    tools.require(*HOST_TOOLS)


# ---- the cluster-wide image ----------------------------------------------------------------------------------

def cluster_key(cluster: Cluster) -> str:
    """Everything that changes the cluster-wide image: nothing per node, nothing secret."""
    b = cluster.base
    base_file = None
    if b.source == "file" and b.path is not None:
        st = b.path.stat()
        base_file = (str(b.path), st.st_size, st.st_mtime_ns)
    data = [cache.tree_digest(resources.stages_dir()), CLUSTER_IMAGE_FORMAT]
    data += [cache.digest(Path(m.__file__).read_text()) for m in (base, stages, chroot)]
    if b.source == "debian":
        data.append(cache.tree_digest(base.debian_dir()))
    # Whole dataclasses, so a field added later is part of the key without anyone remembering to add it.
    return cache.digest(__version__, b, base_file, RELEASES[b.release], cluster.login, data)


def disk_id_for(key: str) -> str:
    """A stable disk identifier per cluster image (so its PARTUUIDs are too)."""
    return key[:8]


def cluster_image(cluster: Cluster) -> Path:
    """The cached cluster-wide image directory (image.img, manifest), built when missing."""
    key = cluster_key(cluster)
    entry = cache.lookup("cluster", key)
    if entry is not None:
        progress.say(f"==> cluster image: cached ({key[:12]})")
        return entry
    check_host()
    with cache.locked("cluster", key):
        entry = cache.lookup("cluster", key)
        if entry is not None:
            return entry
        b = cluster.base
        info = {"source": b.source, "release": b.release, "arch": b.arch, "pibuild": __version__}
        with cache.new_entry("cluster", key, info) as tmp:
            if b.source == "debian":
                _build_debian(cluster, tmp, disk_id_for(key))
            else:
                _build_from_image(cluster, tmp)
        return cache.lookup("cluster", key)


def _build_debian(cluster: Cluster, tmp: Path, disk_id: str) -> None:
    rootfs = tmp / "rootfs"
    with phase(f"debian base: mmdebstrap {cluster.base.release} {cluster.base.arch} (the long part)",
               tool_draws_progress=True):  # mmdebstrap's own bars on a terminal
        base.mmdebstrap(cluster, rootfs)
    with phase("stages"):
        base.lay_debian_files(rootfs, disk_id)
        with chroot.chroot(rootfs, cluster.base.arch) as ch:
            stages.run_stages(ch, cluster, packages_installed=True)
            base.finish_debian(ch)
    write_manifest(rootfs, tmp / "manifest")
    with phase("disk image"):
        make_image(rootfs, tmp / "image.img", disk_id, boot_dir=rootfs / base.DEBIAN_BOOT_MOUNT.lstrip("/"))
    mounts.remove_tree(rootfs)


def _build_from_image(cluster: Cluster, tmp: Path) -> None:
    image = tmp / "image.img"
    with phase(f"base image ({cluster.base.source})"):
        if cluster.base.source == "raspios":
            from builder import download
            base.decompress(download.fetch_raspios(cluster.base, cache.cache_root()), image)
        else:
            base.decompress(cluster.base.path, image)
    with phase("grow the root partition for the cluster packages"):
        grow_root(image, RASPIOS_GROWTH)
    layout = read_layout(image)
    with phase("stages"), mounts.partition_mounted(image, layout.root_offset, layout.root_size,
                                                    tmp / "mnt") as root:
        with chroot.chroot(root, cluster.base.arch) as ch:
            stages.run_stages(ch, cluster, packages_installed=False)
        write_manifest(root, tmp / "manifest")


def grow_root(image: Path, extra: int) -> None:
    """Make room: extend the file, the last partition and its ext4."""
    layout = read_layout(image)
    new_size = layout.root_offset + layout.root_size + extra
    os.truncate(image, new_size)
    tools.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-N", "2", str(image)], input=", +\n", capture=True)
    layout = read_layout(image)
    with mounts.loop_device(image, layout.root_offset, layout.root_size) as dev:
        tools.run(["e2fsck", "-f", "-y", dev], capture=True, check=False)
        tools.run(["resize2fs", dev], capture=True)


def make_image(rootfs: Path, image: Path, disk_id: str, boot_dir: Path) -> None:
    """An MBR image with boot_dir's files in a FAT32 `bootfs` and the rest of rootfs in an ext4 `rootfs`."""
    used = int(tools.run(["du", "-s", "-B1", "--one-file-system", str(rootfs)], capture=True).stdout.split()[0])
    root_size = -(-int(used * 1.15 + ROOT_HEADROOM) // (4 * MIB)) * (4 * MIB)
    root_offset = BOOT_START + BOOT_SIZE
    with open(image, "wb") as f:
        f.truncate(root_offset + root_size)
    table = (f"label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\n"
             f"start={BOOT_START // SECTOR}, size={BOOT_SIZE // SECTOR}, type=c\n"
             f"start={root_offset // SECTOR}, size={root_size // SECTOR}, type=83\n")
    tools.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(image)], input=table, capture=True)
    # FAT32 `bootfs` in place, then the firmware, kernel and initrd into it.
    tools.run(["mkfs.vfat", "-F", "32", "-n", "bootfs", "--offset", str(BOOT_START // SECTOR),
               "-i", disk_id, str(image), str(BOOT_SIZE // 1024)], capture=True)
    boot_files = sorted(boot_dir.iterdir())
    if boot_files:
        tools.run(["mcopy", "-s", "-o", "-i", f"{image}@@{BOOT_START}", *map(str, boot_files), "::/"],
                  capture=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    # ext4 `rootfs` from the directory, without the boot partition's files under its mount point.
    with tempfile.TemporaryDirectory(dir=image.parent) as aside:
        moved = Path(aside) / "boot"
        os.rename(boot_dir, moved)
        boot_dir.mkdir(mode=0o755)
        try:
            features = RELEASE_EXT4_FEATURES_DEFAULT
            tools.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs", "-O", features,
                       "-E", f"offset={root_offset},root_owner=0:0", "-d", str(rootfs),
                       str(image), f"{root_size // 1024}k"], capture=True)
        finally:
            boot_dir.rmdir()
            os.rename(moved, boot_dir)


# Bullseye's e2fsck and kernel cannot read orphan_file, which newer mke2fs turns on by default.
RELEASE_EXT4_FEATURES_DEFAULT = "^orphan_file,^metadata_csum_seed"


def write_manifest(root: Path, dest: Path) -> None:
    """Installed packages, one `name version` a line, from the image's dpkg status."""
    lines, pkg, version, installed = [], None, None, False
    for line in (root / "var/lib/dpkg/status").read_text(errors="replace").splitlines() + [""]:
        if line.startswith("Package: "):
            pkg = line.split(": ", 1)[1]
        elif line.startswith("Version: "):
            version = line.split(": ", 1)[1]
        elif line.startswith("Status: "):
            installed = line.endswith(" installed")
        elif line == "":
            if pkg and version and installed:
                lines.append(f"{pkg} {version}")
            pkg, version, installed = None, None, False
    dest.write_text("\n".join(sorted(lines)) + "\n")


# ---- nodes ---------------------------------------------------------------------------------------------------

def output_name(cluster: Cluster, node: str) -> str:
    return f"{cluster.name}-{node}"


# An image is secret material (see the README's "Secrets"): the initiator's carries the hacluster password, every one
# its hash and the login user's keys. The sidecars carry none (checksum, block map, package list).
IMAGE_MODE = 0o600
SIDECAR_MODE = 0o644


def secrets_note(cluster: Cluster, images: list[Path]) -> str:
    """Where the secrets of a build are, for the user who has to keep them."""
    initiator = [p for p in images if p.name == f"{output_name(cluster, cluster.initiator.name)}.img"]
    lines = ["secrets: these images are secret material (mode 0600; keep them so):"]
    if initiator:
        lines.append(f"  {initiator[0]} holds the hacluster password in plaintext "
                     f"({plan.PASSWORD_PATH}, deleted on the Pi once the cluster formed)")
    lines.append("  every image holds the cluster's corosync authkey, the hacluster password's hash and the login "
                 "user's keys and password hash")
    lines.append(f"  the password itself: {cluster.hacluster_password_file}; the corosync secret: "
                 f"{cluster.corosync_key_file} (keep both: a replacement card needs the same)")
    lines.append("  flash them, then delete them or keep them where only you can read them (README: Secrets)")
    return "\n".join(lines)


def build_nodes(cluster: Cluster, nodes: list[str], outdir: Path) -> list[Path]:
    """Every requested node from one cluster-wide image: byte-identical packages by construction."""
    password = secrets.hacluster_password(cluster.hacluster_password_file)
    plans = {n: render.render_node(cluster, n, password) for n in nodes}
    secrets.make_private_dir(outdir)
    key = cluster_key(cluster)
    # The same for every node: built once (in the first node's image) and cached.
    cib_configuration = functools.partial(cib.configuration, arch=cluster.base.arch,
                                          commands=plan.cib_commands(cluster), cluster_key=key)
    built = []
    entry = None
    for n in nodes:
        name = output_name(cluster, n)
        node_key = cache.digest(key, [(e.path, e.mode, e.symlink, hashlib.sha256(e.data or b"").hexdigest())
                                      for e in plans[n]])
        stamp = outdir / f".{name}.stamp"
        final = outdir / f"{name}.img"
        if final.exists() and stamp.exists() and stamp.read_text().strip() == node_key and all(
                (outdir / f"{name}{s}").exists() for s in (".img.sha256", ".img.bmap", ".manifest")):
            progress.say(f"==> {final}: up to date")
            os.chmod(final, IMAGE_MODE)  # an image of an older pibuild was world-readable
            built.append(final)
            continue
        if entry is None:
            entry = cluster_image(cluster)
        check_host()
        build_node(entry, plans[n], secrets.crypt_hash(password), outdir, name, cib_configuration)
        stamp.write_text(node_key + "\n")
        progress.say(f"    {final} ({final.stat().st_size // MIB} MiB)")
        built.append(final)
    return built


def build_node(entry: Path, entries: list[render.Entry], hacluster_hash: str, outdir: Path, name: str,
               cib_configuration: Callable[[Path], bytes]) -> None:
    """Copy the cluster image, lay the node's files into it, then write the outputs under temporary names."""
    final = {s: outdir / f"{name}{s}" for s in (".img", ".img.sha256", ".img.bmap", ".manifest")}
    tmp = {s: outdir / f".{name}{s}.partial-{os.getpid()}" for s in final}
    try:
        with phase(f"{name}: copy the cluster image"):
            # Created 0600 before a byte of it is written: cp keeps an existing file's mode.
            tmp[".img"].unlink(missing_ok=True)  # a leftover of a killed build whose pid this one reuses
            os.close(os.open(tmp[".img"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, IMAGE_MODE))
            tools.run(["cp", "--sparse=always", "--reflink=auto", str(entry / "image.img"), str(tmp[".img"])])
            os.chmod(tmp[".img"], IMAGE_MODE)
        layout = read_layout(tmp[".img"])
        with tempfile.TemporaryDirectory(prefix="pibuild-mnt-") as mnt, \
                mounts.partition_mounted(tmp[".img"], layout.root_offset, layout.root_size, Path(mnt)) as root:
            with phase(f"{name}: node files"):
                render.write_tree(entries, root)
                set_password_hash(root, "hacluster", hacluster_hash)
            with phase(f"{name}: the cluster's CIB (the image's own pcs, cached)"):
                target = root / cib.PATH_IN_IMAGE
                target.write_bytes(cib_configuration(root))
                target.chmod(0o644)
        with phase(f"{name}: block map and checksum"):
            tools.run(["bmaptool", "create", "-o", str(tmp[".img.bmap"]), str(tmp[".img"])], capture=True)
            tmp[".img.sha256"].write_text(f"{tools.file_sha256(tmp['.img'])}  {final['.img'].name}\n")
            shutil.copyfile(entry / "manifest", tmp[".manifest"])
            for suffix in (".img.sha256", ".img.bmap", ".manifest"):
                os.chmod(tmp[suffix], SIDECAR_MODE)
        for suffix in (".img.sha256", ".img.bmap", ".manifest", ".img"):  # the image last: it marks completion
            os.replace(tmp[suffix], final[suffix])
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)


def set_password_hash(root: Path, user: str, crypt_hash: str) -> None:
    """Replace a user's password field in the image's /etc/shadow (0640 root:shadow is kept)."""
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == user:
            fields[1] = crypt_hash
            lines[i] = ":".join(fields)
            break
    else:
        raise PibuildError(f"the image has no '{user}' account: are the cluster packages installed?")
    st = shadow.stat()
    shadow.write_text("\n".join(lines) + "\n")
    os.chown(shadow, st.st_uid, st.st_gid)
    os.chmod(shadow, st.st_mode & 0o7777)
