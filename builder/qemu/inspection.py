"""What is in an image, read without booting it: the boot files in its FAT (with mtools: these machines have no vfat
module) and, from a mounted root file system, the node it is (arch, hostname, firstboot plan, static address)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from builder import tools
from builder.errors import PibuildError, UsageError
from builder.layout import Layout, read_layout
from builder.releases import ARCHES, MODELS, QEMU_BOARDS

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
# Raspberry Pi OS boot mode per arch: QEMU machine (releases.QEMU_BOARDS), kernel, device trees (Raspberry Pi's
# name, then the upstream kernel's), initramfs (when the image has one).
RASPI = {
    "arm64": ("raspi3b", "kernel8.img", ("bcm2710-rpi-3-b.dtb", "bcm2837-rpi-3-b.dtb"),
              "initramfs8"),
    "armhf": ("raspi2b", "kernel7.img", ("bcm2709-rpi-2-b.dtb", "bcm2836-rpi-2-b.dtb"),
              "initramfs7"),
}
# ELF e_machine of the root file system's binaries -> Debian arch.
ELF_MACHINES = {0x28: "armhf", 0xB7: "arm64"}


@dataclass(frozen=True)
class Boot:
    """How to boot an image: from its boot partition."""

    mode: str               # "virt" | "raspi" (a Raspberry Pi board: Raspberry Pi OS's kernel, or `--board`)
    arch: str | None        # virt: from the kernel's name; raspi: from the root file system (Node.arch)
    kernel: str             # file names in the FAT
    initrd: str | None
    dtb: str | None
    cmdline: str            # cmdline.txt as the image has it
    machine: str = "virt"   # QEMU's -M: "virt", or a releases.QEMU_BOARDS name
    console: str = "ttyAMA0"  # the UART of the serial console, as the guest's kernel names it
    own_kernel: bool = True   # False: another build of the image's kernel (builder.emulation)

    @property
    def serial_index(self) -> int:
        """Which of the machine's UARTs QEMU's (one) -serial must reach: the board's order, 0 on virt."""
        board = QEMU_BOARDS.get(self.machine)
        return board.uarts.index(self.console) if board else 0


@dataclass(frozen=True)
class Node:
    """What the image says about its node, read from the (overlay's) root file system."""

    arch: str
    hostname: str                  # /etc/hostname
    plan: dict | None              # /etc/pibuild/firstboot.json (None: not a pibuild node image)
    interface: str | None          # the statically configured interface and address ("A/P")
    address: str | None

    @property
    def name(self) -> str:
        return self.plan["node"] if self.plan else self.hostname


def _mtools(image: Path, offset: int, *argv: str) -> str:
    return tools.run([argv[0], "-i", f"{image}@@{offset}", *argv[1:]], capture=True,
                     env=MTOOLS_ENV).stdout.decode(errors="replace")


def fat_files(image: Path, layout: Layout) -> list[str]:
    """The names at the top of the boot partition."""
    out = _mtools(image, layout.boot_offset, "mdir", "-b", "::/")
    return [line[3:].rstrip("/") for line in out.splitlines() if line.startswith("::/")]


def fat_copy(image: Path, layout: Layout, name: str, dest: Path) -> Path:
    _mtools(image, layout.boot_offset, "mcopy", "-n", f"::/{name}", str(dest))
    return dest


def _version_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _config_txt(text: str) -> tuple[str | None, str | None]:
    """kernel= and `initramfs FILE` from a config.txt (the last of each wins, as on the Pi)."""
    kernel = initrd = None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("kernel="):
            kernel = line.split("=", 1)[1].strip()
        elif line.startswith("initramfs "):
            initrd = line.split()[1]
    return kernel, initrd


def inspect_boot(image: Path, workdir: Path, layout: Layout | None = None) -> Boot:
    """The boot mode and files of an image; copies config.txt and cmdline.txt into workdir to read them."""
    layout = layout or read_layout(image)
    names = set(fat_files(image, layout))
    if "cmdline.txt" not in names:
        raise PibuildError(f"{image}: the boot partition has no cmdline.txt: not a Raspberry Pi image")
    cmdline = fat_copy(image, layout, "cmdline.txt", workdir / "cmdline.txt").read_text().strip()
    config = ""
    if "config.txt" in names:
        config = fat_copy(image, layout, "config.txt", workdir / "config.txt").read_text(errors="replace")
    kernel, initrd = _config_txt(config)
    debian = sorted((n for n in names if n.startswith("vmlinuz-")), key=_version_key)
    if debian:
        if kernel not in names or not kernel.startswith("vmlinuz-"):
            # Several kernels after an upgrade and no kernel= line: the newest, as raspi-firmware would pick.
            kernel = next((k for k in reversed(debian) if not k.endswith("-lpae")), debian[-1])
        version = kernel.removeprefix("vmlinuz-")
        if initrd not in names:
            initrd = f"initrd.img-{version}" if f"initrd.img-{version}" in names else None
        arch = "arm64" if version.endswith("-arm64") else "armhf" if "-armmp" in version else None
        if arch is None:
            raise PibuildError(f"{image}: cannot tell the architecture of kernel {kernel} (expected a Debian "
                               "-arm64 or -armmp kernel)")
        return Boot("virt", arch, kernel, initrd, None, cmdline, console=ARCHES[arch].console)
    if any(spec[1] in names for spec in RASPI.values()):
        return Boot("raspi", None, "", None, None, cmdline)  # kernel and dtb chosen once the arch is known
    raise PibuildError(f"{image}: the boot partition holds neither Debian's vmlinuz-* nor Raspberry Pi OS's "
                       "kernel7.img/kernel8.img: nothing QEMU can boot")


def raspi_boot(boot: Boot, arch: str, names: set[str]) -> Boot:
    machine, kernel, dtbs, initrd = RASPI[arch]
    dtb = next((d for d in dtbs if d in names), None)
    if kernel not in names or dtb is None:
        raise PibuildError(f"the boot partition lacks {kernel} or {dtbs[0]}, needed to boot {arch} on QEMU's "
                           "raspi machine")
    return Boot("raspi", arch, kernel, initrd if initrd in names else None, dtb, boot.cmdline, machine=machine)


def board_boot(boot: Boot, node: Node, names: set[str]) -> Boot:
    """`--board`: the QEMU board of the node's model (its `model` in the firstboot plan) with the image's own kernel
    and initrd and the model's upstream device tree; a Raspberry Pi OS image boots on its board already."""
    model = MODELS.get((node.plan or {}).get("model", ""))
    if model is None:
        raise UsageError(f"{node.name}: the image does not say which Raspberry Pi model it is for (no `model` in "
                         "/etc/pibuild/firstboot.json: built by an older pibuild); rebuild it with `pibuild node "
                         f"{node.name}`, or smoke it without --board")
    board = model.qemu_boards.get(node.arch)
    if board is None:
        raise UsageError(f"nodes[].model {model.name} ({model.description}, {node.arch}): QEMU has no board that "
                         "emulates it (its Raspberry Pi boards are the Pi 2B and 3B); the closest check available "
                         "is `pibuild smoke IMAGE` without --board (QEMU's virt machine)")
    if boot.mode == "raspi":
        return boot
    if model.dtb not in names:
        raise PibuildError(f"the boot partition lacks {model.dtb}, the device tree of the {model.description}")
    return dataclasses.replace(boot, mode="raspi", machine=board, dtb=model.dtb, console=model.uart)


def inside(root: Path, path: str) -> Path:
    """A path in the guest's root, following symlinks inside it (absolute ones too), never out to the host."""
    current = root
    parts = [p for p in path.strip("/").split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                break
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.strip("/").split("/") if p] + parts
            continue
        if part == "..":
            current = current.parent if current != root else root
        elif part != ".":
            current = candidate
    return current


def elf_arch(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))


def static_address(root: Path) -> tuple[str | None, str | None]:
    """(interface, "address/prefix") of the static configuration: NetworkManager keyfiles, else dhcpcd.conf."""
    keyfiles = inside(root, "/etc/NetworkManager/system-connections")
    for keyfile in sorted(keyfiles.glob("*.nmconnection")) if keyfiles.is_dir() else []:
        iface = address = None
        section = ""
        for line in keyfile.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif line.startswith("interface-name="):
                iface = line.split("=", 1)[1]
            elif section == "[ipv4]" and re.match(r"address\d*=", line):
                address = line.split("=", 1)[1].split(",")[0]
        if address:
            return iface, address
    dhcpcd = inside(root, "/etc/dhcpcd.conf")
    if dhcpcd.is_file():
        iface = None
        for line in dhcpcd.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["interface"] and len(words) > 1:
                iface = words[1]
            elif words[:1] == ["static"] and len(words) > 1 and words[1].startswith("ip_address="):
                return iface, words[1].split("=", 1)[1]
    return None, None


def read_node(root: Path) -> Node:
    arch = elf_arch(inside(root, "/usr/bin/dpkg")) or elf_arch(inside(root, "/bin/busybox"))
    if arch is None:
        raise PibuildError("cannot tell the architecture of the root file system (no ARM /usr/bin/dpkg)")
    hostname_file = inside(root, "/etc/hostname")
    hostname = hostname_file.read_text().strip() if hostname_file.is_file() else ""
    plan_file = inside(root, "/etc/pibuild/firstboot.json")
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    iface, address = static_address(root)
    return Node(arch, hostname, plan, iface, address)
