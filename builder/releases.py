"""Everything that differs between Debian/Raspberry Pi OS releases, in one table.

Code asks RELEASES[name].<field>; nothing else in pibuild tests a release name.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PcsSyntax:
    """The pcs version a release ships and the argv details that changed between versions."""

    version: str
    # `pcs cluster destroy` asks for confirmation from 0.11 on: --force there, --yes from 0.12.
    destroy_confirm: tuple[str, ...]
    # `pcs resource defaults NAME=VALUE` is deprecated from 0.10.7 and gone in 0.12; `update` works on all three.
    resource_defaults: tuple[str, ...] = ("resource", "defaults", "update")
    # `resource create` puts a resource in a group with `--group G` up to 0.11 (0.11.5 reads a `group` word after
    # `op` as another operation); 0.12 adds the `group G` keyword and deprecates `--group`.
    group_keyword: tuple[str, ...] = ("--group",)
    # `pcs cluster setup` writes a random cluster_uuid into corosync.conf from 0.11.5 on unless told not to; every
    # node makes its own corosync.conf, and all must be the same. 0.10.8 writes none and knows no such option.
    setup_reproducible: tuple[str, ...] = ("--no-cluster-uuid",)


@dataclass(frozen=True)
class Release:
    name: str
    debian_version: int
    # Where the FAT boot partition is mounted in the running system.
    boot_mount: str
    # How Raspberry Pi OS of this release configures a static address: "dhcpcd" or "networkmanager".
    network_backend: str
    # Debian archive components holding raspi-firmware for the debian base.
    components: tuple[str, ...]
    # Packages that provide the network backend in a debian base.
    network_packages: tuple[str, ...]
    pcs: PcsSyntax
    # Raspberry Pi OS's own first-boot machinery in this release: "raspberrypi-sys-mods" (init= in cmdline.txt,
    # which expands the root partition) or "cloud-init" (trixie, which must be kept from rewriting pibuild's files).
    first_boot_hooks: tuple[str, ...]
    # How BIND notices a floating address that arrives after it started (9.16 rescans on a timer, in minutes).
    bind_interface_scan: str
    # Whether the node must bring its own `localhost` zone, which the named2 monitor asks by default (trixie's bind9
    # no longer ships named.conf.default-zones, and BIND 9.20 alone answers SERVFAIL for localhost). A node file:
    # left out of the repr, which image.cluster_key() digests, as it changes no cluster image.
    bind_localhost_zone: bool = field(default=False, repr=False)
    # The Raspberry Pi OS Lite download directory names, by arch (raspios base).
    raspios_dirs: dict[str, str] = field(default_factory=dict)
    # The pi-gen branch that builds this release, by arch (`pibuild pigen`): pi-gen's build.sh sets ARCH itself, one
    # branch per arch (bookworm-arm64 checked by running its build.sh on an exported stage; the others follow its
    # naming of release branches). Left out of the repr, which image.cluster_key() digests: it changes no image.
    pigen_branches: dict[str, str] = field(default_factory=dict, repr=False)


RELEASES: dict[str, Release] = {
    "bullseye": Release(
        name="bullseye",
        debian_version=11,
        boot_mount="/boot",
        network_backend="dhcpcd",
        components=("main", "non-free"),
        network_packages=("dhcpcd5",),
        pcs=PcsSyntax(version="0.10.8", destroy_confirm=(), setup_reproducible=()),
        first_boot_hooks=("raspberrypi-sys-mods",),
        bind_interface_scan="interface-interval 1;",
        raspios_dirs={"armhf": "raspios_oldstable_lite_armhf", "arm64": "raspios_oldstable_lite_arm64"},
        pigen_branches={"armhf": "bullseye", "arm64": "bullseye-arm64"},
    ),
    "bookworm": Release(
        name="bookworm",
        debian_version=12,
        boot_mount="/boot/firmware",
        network_backend="networkmanager",
        components=("main", "non-free-firmware"),
        network_packages=("network-manager",),
        pcs=PcsSyntax(version="0.11.5", destroy_confirm=("--force",)),
        first_boot_hooks=("raspberrypi-sys-mods",),
        bind_interface_scan="automatic-interface-scan yes;",
        raspios_dirs={"armhf": "raspios_lite_armhf", "arm64": "raspios_lite_arm64"},
        pigen_branches={"armhf": "bookworm", "arm64": "bookworm-arm64"},
    ),
    "trixie": Release(
        name="trixie",
        debian_version=13,
        boot_mount="/boot/firmware",
        network_backend="networkmanager",
        components=("main", "non-free-firmware"),
        network_packages=("network-manager",),
        pcs=PcsSyntax(version="0.12.0.2", destroy_confirm=("--yes",), group_keyword=("group",)),
        first_boot_hooks=("cloud-init",),
        bind_interface_scan="automatic-interface-scan yes;",
        bind_localhost_zone=True,
        raspios_dirs={"armhf": "raspios_lite_armhf", "arm64": "raspios_lite_arm64"},
        pigen_branches={"armhf": "trixie", "arm64": "trixie-arm64"},
    ),
}


@dataclass(frozen=True)
class Arch:
    name: str
    # The Debian kernel a debian base installs, and how qemu-system runs it (smoke test, lab).
    kernel_package: str
    qemu_system: str
    qemu_cpu: str
    qemu_user_binfmt: str
    # armhf's non-LPAE kernel sees only virtio-mmio devices, never PCI ones.
    qemu_disk_device: str = "virtio-blk-device"
    qemu_net_device: str = "virtio-net-device"
    console: str = "ttyAMA0"
    # The kernel flavour the lab boots instead of the image's own under TCG (builder/emulation.py says why).
    emulation_flavour: str | None = None
    # Kernel command-line options for an emulated (TCG) boot only, never in the image: protections whose cost is
    # small on a Pi but large under TCG (measured with bench/smoke.py, README "Emulated boots").
    # init_on_alloc=0: Debian's kernels zero every page they allocate; emulated, that alone stalled guests for
    #   seconds (soft lockups in virtio-net's buffer refill, systemd slow to answer systemctl).
    # kpti=0, nokaslr (arm64): with KASLR, Debian's arm64 kernel unmaps itself at every return to user space
    #   (page-table isolation) on any CPU, and TCG flushes its translations at every such switch.
    tcg_cmdline: tuple[str, ...] = ()
    # The CPU qemu-user emulates for the image's programs at build time (QEMU_CPU), None for qemu's default ("max").
    # arm64: max has pointer authentication, which TCG computes slowly, and trixie's programs sign every return
    # address (Debian builds arm64 with branch protection from trixie on): `python3 -c "import pcs.app"` in a
    # trixie image took 39.8 s as max, 7.2 s as a Cortex-A53 (the Pi 3's CPU; Debian's arm64 baseline).
    qemu_user_cpu: str | None = None


ARCHES: dict[str, Arch] = {
    "armhf": Arch("armhf", "linux-image-armmp", "qemu-system-arm", "cortex-a15", "qemu-arm",
                  emulation_flavour="armmp-lpae", tcg_cmdline=("init_on_alloc=0",)),
    "arm64": Arch("arm64", "linux-image-arm64", "qemu-system-aarch64", "cortex-a53", "qemu-aarch64",
                  tcg_cmdline=("init_on_alloc=0", "kpti=0", "nokaslr"), qemu_user_cpu="cortex-a53"),
}


# Raspberry Pi Imager's board families, by model: its device tags are "<family>-32bit" (armhf) and "<family>-64bit"
# (arm64). Boards share their SoC's family (Zero: pi1, Zero 2 W: pi3, 400 and CM4: pi4, CM5: pi5), as in Imager's
# own device list.
IMAGER_FAMILIES: dict[str, tuple[str, ...]] = {
    "pi1": ("pi1b", "pi1a", "pizero"),
    "pi2": ("pi2b", "pi2b-v1.2"),
    "pi3": ("pi3b", "pi3b+", "pi3a+", "pizero2w"),
    "pi4": ("pi4b", "pi400", "cm4"),
    "pi5": ("pi5", "cm5"),
}


def imager_tag(model: str, arch: str) -> str:
    """The Raspberry Pi Imager device tag of a board running arch (pibuild's imager repository)."""
    family = next(f for f, models in IMAGER_FAMILIES.items() if model in models)
    return f"{family}-{'64bit' if arch == 'arm64' else '32bit'}"


@dataclass(frozen=True)
class QemuBoard:
    """A QEMU machine that emulates a Raspberry Pi's SoC (`pibuild smoke --board`)."""

    machine: str
    binary: str
    # The SoC's UARTs as the upstream kernel names them, in the order of QEMU's -serial options.
    uarts: tuple[str, ...] = ("ttyAMA0", "ttyS1")


QEMU_BOARDS: dict[str, QemuBoard] = {
    "raspi2b": QemuBoard("raspi2b", "qemu-system-arm"),
    "raspi3b": QemuBoard("raspi3b", "qemu-system-aarch64"),
}


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    arches: tuple[str, ...]
    # Debian's armhf needs ARMv7; the ARMv6 boards run only Raspberry Pi OS's armhf.
    armv6: bool = False
    # The upstream kernel's device tree of the board (Debian's raspi-firmware puts it on the boot partition).
    dtb: str | None = None
    # The UART on the GPIO header's pins 8/10 with `enable_uart=1`: the PL011 where there is no Bluetooth, the mini
    # UART where Bluetooth has the PL011.
    uart: str = "ttyAMA0"
    # The QEMU board that boots it, by arch (QEMU_BOARDS). QEMU's raspi3b starts its cores in 64-bit mode only (a
    # 32-bit kernel printed nothing there), so an armhf Pi 3 boots on raspi2b, whose BCM2836 has the BCM2837's
    # peripherals at the same addresses, with the Pi 3's own device tree.
    qemu_boards: dict[str, str] = field(default_factory=dict)


_PI3 = {"armhf": "raspi2b", "arm64": "raspi3b"}
MODELS: dict[str, Model] = {m.name: m for m in (
    Model("pi1b", "Raspberry Pi 1 Model B/B+", ("armhf",), armv6=True),
    Model("pi1a", "Raspberry Pi 1 Model A/A+", ("armhf",), armv6=True),
    Model("pizero", "Raspberry Pi Zero / Zero W", ("armhf",), armv6=True),
    Model("pi2b", "Raspberry Pi 2 Model B v1.1 (Cortex-A7, 32-bit only)", ("armhf",), dtb="bcm2836-rpi-2-b.dtb",
          qemu_boards={"armhf": "raspi2b"}),
    Model("pi2b-v1.2", "Raspberry Pi 2 Model B v1.2 (Cortex-A53)", ("armhf", "arm64")),
    Model("pi3b", "Raspberry Pi 3 Model B", ("armhf", "arm64"), dtb="bcm2837-rpi-3-b.dtb", uart="ttyS1",
          qemu_boards=_PI3),
    Model("pi3b+", "Raspberry Pi 3 Model B+", ("armhf", "arm64"), dtb="bcm2837-rpi-3-b-plus.dtb", uart="ttyS1",
          qemu_boards=_PI3),
    Model("pi3a+", "Raspberry Pi 3 Model A+", ("armhf", "arm64"), dtb="bcm2837-rpi-3-a-plus.dtb", uart="ttyS1",
          qemu_boards=_PI3),
    Model("pizero2w", "Raspberry Pi Zero 2 W", ("armhf", "arm64"), dtb="bcm2837-rpi-zero-2-w.dtb", uart="ttyS1",
          qemu_boards=_PI3),
    Model("pi4b", "Raspberry Pi 4 Model B", ("armhf", "arm64")),
    Model("pi400", "Raspberry Pi 400", ("armhf", "arm64")),
    Model("cm4", "Raspberry Pi Compute Module 4", ("armhf", "arm64")),
    Model("pi5", "Raspberry Pi 5", ("arm64",)),
    Model("cm5", "Raspberry Pi Compute Module 5", ("arm64",)),
)}
