"""The partition layout of a Raspberry Pi OS style image (MBR, FAT boot partition, ext4 root), as sfdisk reads it.

Apart from the build so that the VM layer (builder.qemu) reads an image without importing the build stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from builder import tools
from builder.errors import PibuildError

SECTOR = 512


@dataclass(frozen=True)
class Layout:
    disk_id: str
    boot_offset: int
    boot_size: int
    root_offset: int
    root_size: int


def read_layout(image: Path) -> Layout:
    """The partition table of an image, as sfdisk reads it."""
    table = json.loads(tools.run(["sfdisk", "--json", str(image)], capture=True).stdout)["partitiontable"]
    parts = table.get("partitions", [])
    if table.get("label") != "dos" or len(parts) < 2:
        raise PibuildError(f"{image}: not a Raspberry Pi OS style image (an MBR with a boot and a root partition)")
    sector = table.get("sectorsize", SECTOR)
    return Layout(table["id"].removeprefix("0x").lower(), parts[0]["start"] * sector, parts[0]["size"] * sector,
                  parts[1]["start"] * sector, parts[1]["size"] * sector)
