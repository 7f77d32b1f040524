"""The VM layer: boot a pibuild image in qemu-system without changing it, and drive its serial console.

Used by `pibuild smoke` (one node, an isolated user-mode network) and the lab (several nodes on tap devices).

- The image is never written. QEMU boots a qcow2 overlay backed by it (a backing file is only ever opened
  read-only) and every write of the guest lands in the overlay, which is deleted afterwards.
- Two boot modes, chosen from the files in the image's FAT boot partition:
    virt   Debian's kernel and initrd (`vmlinuz-<ver>`, `initrd.img-<ver>`, as config.txt names them) on `-M virt`:
           the debian base. armhf only sees virtio-mmio devices (its non-LPAE kernel has no PCI), so both arches
           use `virtio-blk-device` / `virtio-net-device` (releases.ARCHES).
    raspi  Raspberry Pi OS's kernel7.img/kernel8.img and its bcm27xx device tree on `-M raspi2b` (armhf) or
           `-M raspi3b` (arm64), the disk as the SD card, a `usb-net` NIC.
  The kernel, initrd and device tree are copied out of the FAT with mtools (these machines have no vfat module).
- The console login. The images have no password anyone knows (the login user may have none at all), so before the
  boot a systemd drop-in that makes the serial getty log root in automatically is written into the OVERLAY's root
  file system: qemu-storage-daemon exports the qcow2 overlay as a raw file over FUSE, an offset loop device
  mounts its ext4, and the writes go to the overlay only. Why this way:
    - qemu-nbd needs the nbd kernel module, which these machines do not have;
    - the kernel command line has nothing that fits: `systemd.run=` boots INTO its command instead of
      multi-user.target (and powers off afterwards), `systemd.debug_shell` opens tty9 only before systemd 254,
      credentials for getty autologin arrived only in systemd 256 (bookworm has 252, bullseye 247);
    - an extra initramfs archive would depend on the initramfs generator's script ORDER files.
  The drop-in path works for every release and both boot modes, and the guest still runs its real serial getty,
  so "the login prompt appears" is tested as a person at the console would see it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from builder import emulation, mounts, tools
from builder.errors import MissingTool, PibuildError
from builder.image import Layout, read_layout
from builder.releases import ARCHES

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
# Raspberry Pi OS boot mode per arch: QEMU machine, kernel, device trees (Raspberry Pi's name, then the upstream
# kernel's), initramfs (when the image has one).
RASPI = {
    "arm64": ("qemu-system-aarch64", "raspi3b", "kernel8.img", ("bcm2710-rpi-3-b.dtb", "bcm2837-rpi-3-b.dtb"),
              "initramfs8"),
    "armhf": ("qemu-system-arm", "raspi2b", "kernel7.img", ("bcm2709-rpi-2-b.dtb", "bcm2836-rpi-2-b.dtb"),
              "initramfs7"),
}
# ELF e_machine of the root file system's binaries -> Debian arch.
ELF_MACHINES = {0x28: "armhf", 0xB7: "arm64"}
# The host machine (platform.machine()) on which each guest arch can use KVM.
KVM_HOSTS = {"arm64": ("aarch64", "arm64"), "armhf": ("armv7l", "armv8l")}
# The MAC prefix of the Raspberry Pi Foundation: globally administered, so usb-net's cdc_ether calls it eth0.
PI_MAC_PREFIX = "b8:27:eb"
AUTOLOGIN_DROPIN = "pibuild-autologin.conf"


# ---- what is in the image --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Boot:
    """How to boot an image: from its boot partition."""

    mode: str               # "virt" | "raspi"
    arch: str | None        # virt: from the kernel's name; raspi: from the root file system (Node.arch)
    kernel: str             # file names in the FAT
    initrd: str | None
    dtb: str | None
    cmdline: str            # cmdline.txt as the image has it


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
        return Boot("virt", arch, kernel, initrd, None, cmdline)
    if any(spec[2] in names for spec in RASPI.values()):
        return Boot("raspi", None, "", None, None, cmdline)  # kernel and dtb chosen once the arch is known
    raise PibuildError(f"{image}: the boot partition holds neither Debian's vmlinuz-* nor Raspberry Pi OS's "
                       "kernel7.img/kernel8.img: nothing QEMU can boot")


def raspi_boot(boot: Boot, arch: str, names: set[str]) -> Boot:
    _, _, kernel, dtbs, initrd = RASPI[arch]
    dtb = next((d for d in dtbs if d in names), None)
    if kernel not in names or dtb is None:
        raise PibuildError(f"the boot partition lacks {kernel} or {dtbs[0]}, needed to boot {arch} on QEMU's "
                           "raspi machine")
    return Boot("raspi", arch, kernel, initrd if initrd in names else None, dtb, boot.cmdline)


def _inside(root: Path, path: str) -> Path:
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
    keyfiles = _inside(root, "/etc/NetworkManager/system-connections")
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
    dhcpcd = _inside(root, "/etc/dhcpcd.conf")
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
    arch = elf_arch(_inside(root, "/usr/bin/dpkg")) or elf_arch(_inside(root, "/bin/busybox"))
    if arch is None:
        raise PibuildError("cannot tell the architecture of the root file system (no ARM /usr/bin/dpkg)")
    hostname_file = _inside(root, "/etc/hostname")
    hostname = hostname_file.read_text().strip() if hostname_file.is_file() else ""
    plan_file = _inside(root, "/etc/pibuild/firstboot.json")
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    iface, address = static_address(root)
    return Node(arch, hostname, plan, iface, address)


def enable_root_autologin(root: Path, console: str) -> Path:
    """A drop-in for the serial getty on `console` that logs root in without a password (written to the overlay).

    agetty's own ExecStart is replaced: with `-o` login options (Debian's unit has `-o '-p -- \\u'`) agetty would
    not pass `-f` to login, and login would still ask for a password.
    """
    agetty = "/sbin/agetty"
    for rel in ("/usr/lib/systemd/system/serial-getty@.service", "/lib/systemd/system/serial-getty@.service"):
        unit = _inside(root, rel)
        if unit.is_file():
            for line in unit.read_text().splitlines():
                if line.startswith("ExecStart="):
                    agetty = shlex.split(line.split("=", 1)[1].lstrip("-@+!:"))[0]
                    break
            break
    dropin_dir = _inside(root, f"/etc/systemd/system/serial-getty@{console}.service.d")
    dropin_dir.mkdir(parents=True, exist_ok=True)
    dropin = dropin_dir / AUTOLOGIN_DROPIN
    dropin.write_text("# Written by pibuild into a throw-away QEMU overlay (smoke test, lab), never into an image.\n"
                      "[Service]\nExecStart=\n"
                      f"ExecStart=-{agetty} --autologin root --noclear --keep-baud 115200,57600,38400,9600 "
                      "%I $TERM\n")
    dropin.chmod(0o644)
    return dropin


# ---- the overlay ---------------------------------------------------------------------------------------------

def create_overlay(image: Path, overlay: Path, size: int | None = None) -> Path:
    """A qcow2 file backed by the image (read-only); size, when given, may exceed the image's."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.resolve()), str(overlay)]
    if size is not None:
        argv.append(str(size))
    tools.run(argv, capture=True)
    return overlay


def _qemu_opt(value: Path | str) -> str:
    """A value inside a QEMU -option key=value list: commas doubled."""
    return str(value).replace(",", ",,")


@contextlib.contextmanager
def overlay_root(overlay: Path, layout: Layout, workdir: Path) -> Iterator[Path]:
    """The root file system of a qcow2 overlay, mounted read-write; every write lands in the overlay.

    qemu-storage-daemon exports the overlay as a raw file over FUSE; an offset loop device on that file mounts the
    ext4 (no partition scanning on these machines). Undone in reverse order, also on Ctrl-C.
    """
    if shutil.which("qemu-storage-daemon") is None:
        raise MissingTool("qemu-storage-daemon", "qemu-system-common")
    raw = workdir / "overlay-export.raw"
    raw.touch()
    errlog = workdir / "qemu-storage-daemon.log"
    argv = ["qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file0,filename={_qemu_opt(overlay)}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "--export", f"type=fuse,id=export0,node-name=disk0,mountpoint={_qemu_opt(raw)},writable=on"]
    with open(errlog, "wb") as err:
        # Its own session: a Ctrl-C must not stop it before the loop device on its export is released.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not mounts.mounts_under(raw):
            if proc.poll() is not None or time.monotonic() > deadline:
                detail = errlog.read_text(errors="replace").strip()
                raise PibuildError(f"qemu-storage-daemon could not export {overlay} over FUSE"
                                   + (f": {detail}" if detail else "") + " (is /dev/fuse there?)")
            time.sleep(0.05)
        with mounts.partition_mounted(raw, layout.root_offset, layout.root_size, workdir / "overlay-root") as root:
            yield root
    finally:
        tools.stop_process(proc, signal.SIGTERM, grace=20)
        if mounts.mounts_under(raw):
            subprocess.run(["umount", "--lazy", str(raw)], stderr=subprocess.DEVNULL)
        raw.unlink(missing_ok=True)
        errlog.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (workdir / "overlay-root").rmdir()


# ---- the console ---------------------------------------------------------------------------------------------

class ConsoleError(PibuildError):
    """The console did not answer in time, or QEMU went away."""


class ConsoleTimeout(ConsoleError):
    """A command did not finish in time. The console stays usable: the next command's markers are unique, so its
    late output is skipped."""


class Console:
    """A root shell on the guest's serial console, through pexpect.

    Every command's output is read between two markers the shell prints (`printf` assembles them, so the typed
    command never contains them), which keeps parsing robust against kernel and systemd messages on the console.
    """

    SHELL_SETUP = ("stty -echo cols 250 rows 50; dmesg -n 1; unset HISTFILE; "
                   "export TERM=dumb LC_ALL=C PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 COLUMNS=250")

    def __init__(self, child: pexpect.spawn, note=None):
        self.child = child
        self._note = note or (lambda text: None)
        self._nonce = os.urandom(3).hex()
        self._count = 0

    def expect(self, pattern, timeout: float):
        try:
            return self.child.expect(pattern, timeout=max(timeout, 0.1))
        except pexpect.EOF:
            raise ConsoleError("QEMU exited (see the serial log)") from None

    def wait_login_prompt(self, timeout: float) -> None:
        try:
            self.expect(r"login: ", timeout)
        except pexpect.TIMEOUT:
            raise ConsoleTimeout(f"no login prompt on the serial console within {timeout:.0f} s") from None

    def login(self, timeout: float) -> None:
        """Wait for the autologin shell: type a marker command until it answers (typed-ahead text may be flushed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run(self.SHELL_SETUP, timeout=min(15.0, max(deadline - time.monotonic(), 0.1)))
                return
            except ConsoleTimeout:
                if time.monotonic() >= deadline:
                    raise ConsoleTimeout(f"no root shell on the serial console within {timeout:.0f} s after the "
                                       "login prompt (autologin drop-in not honoured?)") from None

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run one shell command line; its exit status and output (stdout and stderr, \\r removed)."""
        self._count += 1
        tag = f"{self._nonce}x{self._count}"
        self._note(command)
        self.child.send(f"printf '\\n%s%s\\n' @@B {tag}; {{ {command} ; }} 2>&1; "
                        f"printf '\\n%s%s %s\\n' @@E {tag} $?\n")
        deadline = time.monotonic() + timeout
        try:
            # Lines arrive as \r\r\n: the guest's tty and the host's pty both turn \n into \r\n.
            self.expect(f"@@B{tag}\r*\n", timeout)
            self.expect(f"@@E{tag} (\\d+)", deadline - time.monotonic())
        except pexpect.TIMEOUT:
            raise ConsoleTimeout(f"`{command}` did not finish within {timeout:.0f} s") from None
        rc = int(self.child.match.group(1))
        return rc, self.child.before.replace("\r", "").strip("\n")


# ---- the VM --------------------------------------------------------------------------------------------------

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
    # None: QEMU in the foreground with its console on stdio (start() drives it through pexpect).
    detached: Detached | None = None

    boot: Boot | None = field(default=None, init=False)
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
        if boot.mode == "raspi":
            # QEMU's SD card must be a power of two in size: the overlay may be larger than its backing file.
            size = 1 << max(self.image.stat().st_size - 1, 1).bit_length()
        if not self.overlay.exists():
            create_overlay(self.image, self.overlay, size)
        with overlay_root(self.overlay, layout, self.workdir) as root:
            self.node = read_node(root)
            if boot.mode == "raspi":
                boot = raspi_boot(boot, self.node.arch, set(fat_files(self.image, layout)))
            elif boot.arch != self.node.arch:
                raise PibuildError(f"{self.image}: the kernel {boot.kernel} is {boot.arch} but the root file system "
                                   f"is {self.node.arch}")
            if self.autologin:
                enable_root_autologin(root, ARCHES[boot.arch].console)
            if self.emulation_kernel and boot.mode == "virt":
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
        emulation.install_modules(tree, package.abi, _inside(root, "/lib/modules"))
        kernel, initrd = f"vmlinuz-{package.abi}", f"initrd.img-{package.abi}"
        shutil.copy(tree / "boot" / kernel, self.workdir / kernel)
        image_initrd = fat_copy(self.image, layout, boot.initrd, self.workdir / boot.initrd)
        emulation.initramfs(image_initrd, tree, package.abi, self.workdir / initrd)
        image_initrd.unlink()
        return dataclasses.replace(boot, kernel=kernel, initrd=initrd)

    def qemu_argv(self) -> list[str]:
        boot = self.boot
        arch = ARCHES[boot.arch]
        accel = self.accel or accel_for(boot.arch, boot.mode)
        mac = self.mac or mac_for(self.name)
        disk = _qemu_opt(self.overlay)
        if self.tap:
            netdev = f"tap,id=net0,ifname={self.tap},script=no,downscript=no"
        else:
            netdev = "user,id=net0,restrict=on"
        if self.detached:
            serial = (f"socket,id=serial0,path={_qemu_opt(self.detached.serial)},server=on,wait=off,"
                      f"logfile={_qemu_opt(self.serial_log)},logappend=on")
        else:
            serial = "stdio,id=serial0,signal=off"
        argv = [arch.qemu_system if boot.mode == "virt" else RASPI[boot.arch][0], "-name", self.name,
                "-nodefaults", "-no-user-config", "-display", "none",
                "-chardev", serial, "-serial", "chardev:serial0",
                "-kernel", str(self.workdir / boot.kernel)]
        if boot.initrd:
            argv += ["-initrd", str(self.workdir / boot.initrd)]
        extra: tuple[str, ...] = ()
        if accel == "tcg" and self.tcg_tuning:
            extra = arch.tcg_cmdline
        if accel == "tcg" and self.tcg_start_timeout:
            extra = (f"systemd.default_timeout_start_sec={self.tcg_start_timeout}", *extra)
        argv += ["-append", guest_cmdline(boot.cmdline, arch.console, extra)]
        if boot.mode == "virt":
            machine = "virt,highmem=off" if boot.arch == "armhf" else "virt"
            cpu = "host" if accel == "kvm" else arch.qemu_cpu
            argv += ["-M", machine, "-accel", accel, "-cpu", cpu, "-m", str(self.memory_mb), "-smp", str(self.cpus),
                     "-drive", f"if=none,id=disk0,file={disk},format=qcow2,cache=unsafe,discard=unmap",
                     "-device", f"{arch.qemu_disk_device},drive=disk0",
                     "-netdev", netdev, "-device", f"{arch.qemu_net_device},netdev=net0,mac={mac}",
                     "-object", "rng-random,id=rng0,filename=/dev/urandom",
                     "-device", "virtio-rng-device,rng=rng0"]
        else:
            argv += ["-M", RASPI[boot.arch][1], "-dtb", str(self.workdir / boot.dtb),
                     "-drive", f"if=sd,file={disk},format=qcow2,cache=unsafe",
                     "-netdev", netdev, "-device", f"usb-net,netdev=net0,mac={mac}"]
        if self.detached:
            argv += ["-qmp", f"unix:{_qemu_opt(self.detached.qmp)},server=on,wait=off",
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
