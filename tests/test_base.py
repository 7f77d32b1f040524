"""The debian base's initramfs module list, on both layouts of /lib a release can have."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import base

WANTED = {"sdhci-iproc", "virtio_blk", "ext4"}


def _kernel(modules: Path) -> None:
    for rel in ("drivers/mmc/host/sdhci-iproc.ko.xz", "drivers/block/virtio_blk.ko", "fs/ext4/ext4.ko",
                "sound/core/snd.ko", "drivers/gpu/drm/vc4/vc4.ko"):
        (modules / "5.10.0-32-armmp/kernel" / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / "5.10.0-32-armmp/kernel" / rel).write_bytes(b"")


@pytest.mark.parametrize("layout", ["merged-usr", "separate-lib"])
def test_the_list_finds_the_modules_wherever_the_release_keeps_them(tmp_path, layout):
    """Bookworm and trixie keep the modules under /usr/lib (/lib links there); bullseye under a /lib of its own,
    and an empty list there made an initramfs that found no disk."""
    if layout == "merged-usr":
        _kernel(tmp_path / "usr/lib/modules")
        (tmp_path / "lib").symlink_to("usr/lib")
    else:
        _kernel(tmp_path / "lib/modules")
        (tmp_path / "usr/lib").mkdir(parents=True)
    assert set(base.initramfs_modules(tmp_path)) == WANTED
