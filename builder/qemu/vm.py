"""The VM: QEMU started on an image's overlay, either in the foreground with its console driven through pexpect
(`pibuild smoke`) or detached with its console on a socket (the lab).

The QEMU machine follows the image's boot mode (builder.qemu.inspection): `virt` for Debian's kernel, the Raspberry
Pi board for Raspberry Pi OS's; MACHINES maps each to the options that describe its hardware.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from builder import emulation, tools
from builder.errors import PibuildError
from builder.layout import Layout, read_layout
from builder.qemu.console import Console
from builder.qemu.inspection import (
    Boot,
    Node,
    board_boot,
    fat_copy,
    fat_files,
    inside,
    inspect_boot,
    raspi_boot,
    read_node,
)
from builder.qemu.overlay import create_overlay, enable_root_autologin, name_board_nic, overlay_root, qemu_opt
from builder.releases import ARCHES, QEMU_BOARDS

KVM_HOSTS = {"arm64": ("aarch64", "arm64"), "armhf": ("armv7l", "armv8l")}
# The MAC prefix of the Raspberry Pi Foundation: globally administered, so usb-net's cdc_ether calls it eth0.
PI_MAC_PREFIX = "b8:27:eb"


def accel_for(arch: str, mode: str = "virt") -> str:
    """kvm when the guest's arch is the host's and /dev/kvm is usable; tcg otherwise (raspi machines: always)."""
    if mode == "virt" and platform.machine() in KVM_HOSTS[arch] and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg"


def mac_for(name: str) -> str:
    """A stable MAC per VM name under the Raspberry Pi prefix."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{PI_MAC_PREFIX}:{digest[0:2]}:{digest[2:4]}:{digest[4:6]}"


def guest_cmdline(cmdline: str, console: str, extra: tuple[str, ...] = ()) -> str:
    """cmdline.txt for QEMU: the Pi's consoles replaced by the emulated UART; root=PARTUUID=… stays.

    `init=` goes too: Raspberry Pi OS points it at its first-boot resize helper, which reboots.
    """
    words = [w for w in shlex.split(cmdline) if not w.startswith(("console=", "init="))]
    return " ".join([*words, f"console={console},115200", *extra])


def _virt_hardware(vm: Vm, boot: Boot, accel: str, disk: str, netdev: str, mac: str) -> list[str]:
    """QEMU's generic board: virtio-mmio disk, NIC and RNG (releases.ARCHES); armhf's non-LPAE kernel sees no PCI."""
    arch = ARCHES[boot.arch]
    machine = "virt,highmem=off" if boot.arch == "armhf" else "virt"
    cpu = "host" if accel == "kvm" else arch.qemu_cpu
    return ["-M", machine, "-accel", accel, "-cpu", cpu, "-m", str(vm.memory_mb), "-smp", str(vm.cpus),
            "-drive", f"if=none,id=disk0,file={disk},format=qcow2,cache=unsafe,discard=unmap",
            "-device", f"{arch.qemu_disk_device},drive=disk0",
            "-netdev", netdev, "-device", f"{arch.qemu_net_device},netdev=net0,mac={mac}",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=rng0"]


def _raspi_hardware(vm: Vm, boot: Boot, accel: str, disk: str, netdev: str, mac: str) -> list[str]:
    """QEMU's Raspberry Pi board: its own memory and CPUs, the image's device tree, the disk as the SD card."""
    return ["-M", boot.machine, "-dtb", str(vm.workdir / boot.dtb),
            "-drive", f"if=sd,file={disk},format=qcow2,cache=unsafe",
            "-netdev", netdev, "-device", f"usb-net,netdev=net0,mac={mac}"]


@dataclass(frozen=True)
class Machine:
    """A QEMU machine: its qemu-system binary and the options that describe its hardware."""

    binary: Callable[[Boot], str]
    hardware: Callable[[Vm, Boot, str, str, str, str], list[str]]


# Per boot mode (Boot.mode). A board variant of a mode is one more entry here and a Boot that names it.
MACHINES: dict[str, Machine] = {
    "virt": Machine(lambda boot: ARCHES[boot.arch].qemu_system, _virt_hardware),
    "raspi": Machine(lambda boot: QEMU_BOARDS[boot.machine].binary, _raspi_hardware),
}


@dataclass(frozen=True)
class Detached:
    """QEMU in the background (the lab): the serial console on a unix socket that any process can attach to (and
    logged to Vm.serial_log), QMP on another socket, the pid in a file."""

    serial: Path
    qmp: Path
    pidfile: Path


@dataclass
class Vm:
    """One guest booted from an image through a throw-away qcow2 overlay; start() it, use .console, stop() it."""

    image: Path
    workdir: Path                      # holds the overlay, kernel and initrd; the caller owns (and removes) it
    serial_log: Path                   # everything the console prints
    name: str = "pibuild-vm"
    memory_mb: int = 1024              # virt only: the raspi machines have their board's memory
    cpus: int = 1
    tap: str | None = None             # a tap device (lab); None: an isolated user-mode network (restrict=on)
    mac: str | None = None
    accel: str | None = None           # None: accel_for()
    autologin: bool = True
    # Under TCG the guest runs several times slower than a Pi (more so on a busy host): systemd's 90 s default
    # start timeout then fails units that are merely slow (pcsd took >90 s with three VMs on 2 cores). Raised on
    # the kernel command line only, never in the image; units with their own TimeoutStartSec= keep theirs.
    tcg_start_timeout: int | None = 600
    # Boot a Debian armhf image with the LPAE build of its kernel under TCG (the lab; builder/emulation.py).
    emulation_kernel: bool = False
    # Add the arch's TCG-only kernel options (releases.Arch.tcg_cmdline); off only to measure what they save.
    tcg_tuning: bool = True
    # Boot a Debian image on the QEMU board of its node's model (inspection.board_boot), not on virt.
    board: bool = False
    # None: QEMU in the foreground with its console on stdio (start() drives it through pexpect).
    detached: Detached | None = None

    boot: Boot | None = field(default=None, init=False)
    layout: Layout | None = field(default=None, init=False)
    sd_card_size: int | None = field(default=None, init=False)   # raspi: the SD card's size (the overlay's)
    node: Node | None = field(default=None, init=False)
    argv: list[str] = field(default_factory=list, init=False)
    console: Console | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    _child: pexpect.spawn | None = field(default=None, init=False, repr=False)
    _log: object = field(default=None, init=False, repr=False)

    @property
    def overlay(self) -> Path:
        return self.workdir / f"{self.name}.qcow2"

    def prepare(self) -> None:
        """Boot files out of the FAT, the overlay, and (in the overlay only) the console login; reads the node."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        layout = read_layout(self.image)
        boot = inspect_boot(self.image, self.workdir, layout)
        size = None
        if boot.mode == "raspi" or self.board:
            # QEMU's SD card must be a power of two in size, and larger than the image so that the first boot's
            # growth of the root partition has room: the overlay may be larger than its backing file.
            size = 1 << self.image.stat().st_size.bit_length()
        self.layout, self.sd_card_size = layout, size
        if not self.overlay.exists():
            create_overlay(self.image, self.overlay, size)
        with overlay_root(self.overlay, layout, self.workdir) as root:
            self.node = read_node(root)
            names = set(fat_files(self.image, layout)) if boot.mode == "raspi" or self.board else set()
            if boot.mode == "raspi":
                boot = raspi_boot(boot, self.node.arch, names)
            elif boot.arch != self.node.arch:
                raise PibuildError(f"{self.image}: the kernel {boot.kernel} is {boot.arch} but the root file system "
                                   f"is {self.node.arch}")
            if self.board:
                boot = board_boot(boot, self.node, names)
            if boot.mode == "raspi":
                name_board_nic(root, self.node.interface or "eth0")
            if self.autologin:
                enable_root_autologin(root, boot.console)
            if self.emulation_kernel:
                boot = self.emulation_boot(root, boot, layout)
        for name in (boot.kernel, boot.initrd, boot.dtb):
            if name and not (self.workdir / name).exists():
                fat_copy(self.image, layout, name, self.workdir / name)
        self.boot = boot
        self.argv = self.qemu_argv()

    def emulation_boot(self, root: Path, boot: Boot, layout: Layout) -> Boot:
        """The LPAE build of the image's kernel, its modules in the overlay, the image's initramfs extended."""
        flavour = emulation.flavour_for(boot.arch, boot.kernel, self.accel or accel_for(boot.arch, boot.mode))
        if flavour is None or not boot.initrd:
            return boot
        package = emulation.package_for(root, boot.kernel, flavour)
        tree = emulation.fetch(package, emulation.apt_sources(root)) / "root"
        emulation.install_modules(tree, package.abi, inside(root, "/lib/modules"))
        kernel, initrd = f"vmlinuz-{package.abi}", f"initrd.img-{package.abi}"
        shutil.copy(tree / "boot" / kernel, self.workdir / kernel)
        image_initrd = fat_copy(self.image, layout, boot.initrd, self.workdir / boot.initrd)
        emulation.initramfs(image_initrd, tree, package.abi, self.workdir / initrd)
        image_initrd.unlink()
        return dataclasses.replace(boot, kernel=kernel, initrd=initrd, own_kernel=False)

    def qemu_argv(self) -> list[str]:
        boot = self.boot
        arch = ARCHES[boot.arch]
        accel = self.accel or accel_for(boot.arch, boot.mode)
        mac = self.mac or mac_for(self.name)
        disk = qemu_opt(self.overlay)
        if self.tap:
            netdev = f"tap,id=net0,ifname={self.tap},script=no,downscript=no"
        else:
            netdev = "user,id=net0,restrict=on"
        if self.detached:
            serial = (f"socket,id=console,path={qemu_opt(self.detached.serial)},server=on,wait=off,"
                      f"logfile={qemu_opt(self.serial_log)},logappend=on")
        else:
            serial = "stdio,id=console,signal=off"
        machine = MACHINES[boot.mode]
        # QEMU hands its -serial options to the machine's UARTs in order: the unused ones before the console's.
        argv = [machine.binary(boot), "-name", self.name, "-nodefaults", "-no-user-config", "-display", "none",
                "-chardev", serial, *["-serial", "null"] * boot.serial_index, "-serial", "chardev:console",
                "-kernel", str(self.workdir / boot.kernel)]
        if boot.initrd:
            argv += ["-initrd", str(self.workdir / boot.initrd)]
        extra: tuple[str, ...] = ()
        if accel == "tcg" and self.tcg_tuning:
            extra = arch.tcg_cmdline
        if accel == "tcg" and self.tcg_start_timeout:
            extra = (f"systemd.default_timeout_start_sec={self.tcg_start_timeout}", *extra)
        argv += ["-append", guest_cmdline(boot.cmdline, boot.console, extra)]
        argv += machine.hardware(self, boot, accel, disk, netdev, mac)
        if self.detached:
            argv += ["-qmp", f"unix:{qemu_opt(self.detached.qmp)},server=on,wait=off",
                     "-pidfile", str(self.detached.pidfile), "-daemonize"]
        return argv

    @property
    def accel_used(self) -> str:
        return "kvm" if "kvm" in self.argv else "tcg"

    def start(self) -> Console:
        if self.boot is None:
            self.prepare()
        tools.require(self.argv[0])
        self._log = open(self.serial_log, "a", encoding="utf-8", errors="replace")
        self._log.write(f"### pibuild: {shlex.join(self.argv)}\n")
        self._log.flush()
        self.started_at = time.monotonic()
        self._child = pexpect.spawn(self.argv[0], self.argv[1:], encoding="utf-8", codec_errors="replace",
                                    timeout=60, maxread=65536, dimensions=(50, 250))
        self._child.logfile_read = self._log
        self.console = Console(self._child, note=self._note)
        return self.console

    def _note(self, command: str) -> None:
        """A timestamped line in the serial log before each command typed on the console."""
        if self._log is not None:
            self._log.write(f"\n### pibuild +{self.elapsed():.1f}s: {command}\n")
            self._log.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def running(self) -> bool:
        return self._child is not None and self._child.isalive()

    def stop(self, remove_overlay: bool = True) -> None:
        """Kill QEMU (the overlay is throw-away: no clean shutdown needed) and remove what prepare() wrote."""
        child, self._child = self._child, None
        if child is not None:
            with contextlib.suppress(Exception):
                child.terminate(force=True)
            with contextlib.suppress(Exception):
                child.close(force=True)
        if self._log is not None:
            with contextlib.suppress(Exception):
                self._log.close()
            self._log = None
        if remove_overlay:
            for name in (self.overlay.name, "cmdline.txt", "config.txt",
                         *(n for n in ((self.boot.kernel, self.boot.initrd, self.boot.dtb) if self.boot else ())
                           if n)):
                (self.workdir / name).unlink(missing_ok=True)
            self.boot = None

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
