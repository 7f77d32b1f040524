"""The modes of what a build writes: images are secret material, their sidecars are not, pibuild's directories are
private. The node phase of `pibuild node` runs for real (image.build_nodes: cp, an offset loop mount of ext4,
bmaptool, sha256) on a small two-partition image standing in for the cached cluster image; only the cluster image
and the CIB (which need mmdebstrap and the image's pcs) are stand-ins. Any umask gives the same modes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, loop_devices, mounts

from builder import cache, cib, config, plan
from builder import image as image_mod

NODES = ("dns-pm01", "dns-pm02")
MIB = 1 << 20


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def node_build(tmp_path, monkeypatch):
    """Everything build_nodes needs, with a 16 MiB stand-in for the cached cluster image."""
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")
    for tool in ("sfdisk", "mke2fs", "bmaptool", "losetup", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "tests/configs/arm64.yaml", work / "cluster.yaml")
    cluster = config.load(work / "cluster.yaml")

    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nhacluster:!:19000:0:99999:7:::\n")
    entry = tmp_path / "entry"
    entry.mkdir()
    img = entry / "image.img"
    root_offset, size = 4 * MIB, 16 * MIB
    with open(img, "wb") as f:
        f.truncate(size)
    table = (f"label: dos\nunit: sectors\nstart=2048, size=2048, type=c\n"
             f"start={root_offset // 512}, size={(size - root_offset) // 512}, type=83\n")
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", str(img)], input=table, text=True, check=True,
                   capture_output=True)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={root_offset}", "-d", str(rootfs), str(img),
                    f"{(size - root_offset) // 1024}k"], check=True, capture_output=True)
    (entry / "manifest").write_text("pcs 0.11.5-1\n")
    monkeypatch.setattr(image_mod, "cluster_image", lambda _cluster: entry)
    monkeypatch.setattr(image_mod, "check_host", lambda: None)

    seen: dict[str, int] = {}

    def configuration(root: Path, arch: str, commands, cluster_key: str) -> bytes:
        """The CIB phase runs with the node's image still under its temporary name: record that file's mode."""
        for partial in work.glob("out/.*.img.partial-*"):
            seen[partial.name] = mode(partial)
        return b"<configuration/>\n"

    monkeypatch.setattr(cib, "configuration", configuration)
    loops, mounted = loop_devices(), mounts()
    old_umask = os.umask(0)  # the modes are pibuild's own, not the umask's
    try:
        yield cluster, work, seen
    finally:
        os.umask(old_umask)
    assert loop_devices() <= loops and mounts() <= mounted


def test_images_are_private_sidecars_are_not_the_directory_pibuild_makes_is_private(node_build):
    cluster, work, seen = node_build
    out = work / "out"
    built = image_mod.build_nodes(cluster, list(NODES), out)
    assert mode(out) == 0o700
    for node in NODES:
        name = f"clst-64-{node}"
        assert seen[f".{name}.img.partial-{os.getpid()}"] == 0o600, "the image is 0600 from its first byte on"
        assert mode(out / f"{name}.img") == 0o600
        for sidecar in (".img.sha256", ".img.bmap", ".manifest"):
            assert mode(out / f"{name}{sidecar}") == 0o644, sidecar
    assert not list(out.glob("*.partial-*"))
    assert built == [out / f"clst-64-{n}.img" for n in NODES]

    # pibuild node says where the secrets are: the initiator's image with the plaintext, the password file.
    note = image_mod.secrets_note(cluster, built)
    assert f"{out / 'clst-64-dns-pm01.img'} holds the hacluster password in plaintext ({plan.PASSWORD_PATH}" in note
    assert str(work / "secrets/hacluster") in note and "0600" in note
    assert "clst-64-dns-pm02.img holds" not in note


def test_an_older_world_readable_image_is_made_private_when_up_to_date(node_build):
    cluster, work, _ = node_build
    out = work / "out"
    image_mod.build_nodes(cluster, ["dns-pm02"], out)
    (out / "clst-64-dns-pm02.img").chmod(0o644)
    image_mod.build_nodes(cluster, ["dns-pm02"], out)  # up to date: nothing rebuilt
    assert mode(out / "clst-64-dns-pm02.img") == 0o600


def test_an_existing_output_directory_keeps_its_mode(node_build):
    cluster, work, _ = node_build
    out = work / "shared"
    out.mkdir()
    out.chmod(0o755)
    image_mod.build_nodes(cluster, ["dns-pm02"], out)
    assert mode(out) == 0o755
    assert mode(out / "clst-64-dns-pm02.img") == 0o600


def test_cache_entries_are_private_even_under_an_older_readable_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "pibuild"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # as an older pibuild left it
    old_umask = os.umask(0)
    try:
        with cache.new_entry("cluster", "k" * 64, {}) as tmp:
            assert mode(tmp) == 0o700
            (tmp / "image.img").write_bytes(b"")
        with cache.locked("cib", "k" * 64):
            pass
    finally:
        os.umask(old_umask)
    assert mode(root) == 0o700
    assert mode(cache.lookup("cluster", "k" * 64)) == 0o700
