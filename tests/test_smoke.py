"""`pibuild smoke`: boot a node in QEMU (TCG here) through the real CLI. Every release boots in the suite (issue 19):
bullseye and bookworm here, trixie here on its board and in the lab tier, where its two arm64 nodes form their cluster.

- `--board` (issue 20): the bundled example's dns-pm02 (bookworm armhf, a Pi 2B) on QEMU's raspi2b and the arm64
  test cluster's dns-pm01 (trixie, a Pi 3B) on raspi3b, from an SD card larger than the image: every check passes,
  the root partition grew to the end of the card, and the image's sha256 is the same before and after the run;
- a copy of the bullseye armhf node (dhcpcd, pcs 0.10) with a syntax error in /etc/bind/named.conf.options fails
  on QEMU's virt machine, the message names the `named` check and the serial log, which is kept; the checks before
  BIND (boot, login, hostname, the static address) pass;
- the VM layer without booting: boot mode and QEMU argv for a Debian image on virt and on each model's board, for
  a Raspberry Pi OS-shaped one (raspi2b/raspi3b), the models QEMU cannot boot refused with exit 2, the console
  login and the board's NIC name written to the overlay only.

A virt boot takes ~2-6 min under TCG on a 2-core machine, a board boot ~8-10 min (more when other VMs share it);
the bundled example's images are built once per session (seconds with a warm cache, ~14 min cold).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pexpect
import pytest
from conftest import loop_devices, mounts, run_pibuild

from builder import qemu, smoke
from builder.layout import read_layout
from builder.qemu.overlay import overlay_root
from builder.releases import MODELS, QEMU_BOARDS

NODE = "dns-pm01"
IMAGE_NAME = f"clst-01-{NODE}.img"
CHECKS = ("boot", "login", "hostname", "address", "named", "pcsd", "firstboot", "failed-units")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (FUSE export, loop devices, mounts)")
needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-system-arm", "qemu-img", "qemu-storage-daemon", "mcopy", "losetup")),
    reason="needs qemu-system-arm, qemu-utils, qemu-system-common (qemu-storage-daemon), mtools")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def qemu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system-.* -name smoke-"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "pibuild-smoke-*")))


def ours(entries: set[str], *marks: str) -> set[str]:
    """Other engineers' labs and builds share the machine: only what names our temporary paths counts."""
    return {e for e in entries if any(m in e for m in ("pibuild-smoke-", *marks))}


@pytest.fixture
def clean_host(tmp_path):
    """Nothing left behind: no QEMU, loop device, mount or temporary directory of ours."""
    mark = str(tmp_path)
    before = (ours(loop_devices(), mark), ours(mounts(), mark), qemu_pids(), leftovers())
    yield
    assert ours(loop_devices(), mark) == before[0], "a loop device was left attached"
    assert ours(mounts(), mark) == before[1], "a mount (FUSE export or ext4) was left behind"
    assert qemu_pids() <= before[2], "a smoke QEMU is still running"
    assert leftovers() <= before[3], "a temporary file or directory was left behind"


@pytest.fixture(scope="session")
def example_images(tmp_path_factory):
    """The bundled example's two nodes, built once per session in a directory of its own, with no -c (so the
    fallback to the bundled example is used): dns-pm01 (Pi 3B) and dns-pm02 (Pi 2B), bookworm armhf."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    work = tmp_path_factory.mktemp("smoke-build")
    images = {}
    for node in (NODE, "dns-pm02"):
        proc = run_pibuild("node", node, "-o", "out", cwd=work)
        assert proc.returncode == 0, proc.stderr[-4000:]
        images[node] = work / "out" / f"clst-01-{node}.img"
        assert images[node].is_file()
    yield images
    shutil.rmtree(work)  # 1.6 GB each: not left to pytest's basetemp retention


@pytest.fixture(scope="session")
def example_image(example_images):
    return example_images[NODE]


# ---- booting -------------------------------------------------------------------------------------------------

@pytest.mark.qemu
@needs_root
@needs_tools
@pytest.mark.parametrize("arch,machine,dtb,console", [
    ("armhf", "raspi2b", "bcm2836-rpi-2-b.dtb", "ttyAMA0"),     # the example's dns-pm02, a Pi 2B (bookworm)
    ("arm64", "raspi3b", "bcm2837-rpi-3-b.dtb", "ttyS1"),       # tests/configs/arm64.yaml's dns-pm01, a Pi 3B (trixie)
])
def test_board_boot_passes_from_the_sd_card_and_grows_the_root(request, tmp_path, clean_host, arch, machine, dtb,
                                                                 console):
    """`pibuild smoke --board`: the image's kernel (armhf: its LPAE build, as in the lab) on QEMU's board for the
    node's model, the model's device tree, the SD card larger than the image, the USB NIC as eth0: every check
    passes, the root partition and its ext4 grew to the end of the card, and the image is unchanged."""
    if arch not in os.environ.get("PIBUILD_BOARD_ARCHES", "armhf").split(","):
        pytest.skip(f"the {arch} board boot runs with PIBUILD_BOARD_ARCHES=armhf,arm64 (CI's budget holds one board "
                    "boot beside three cold releases and a lab; trixie arm64 boots in the lab)")
    if arch == "armhf":
        image = request.getfixturevalue("example_images")["dns-pm02"]
    else:
        image = request.getfixturevalue("arm64_cluster")["out"] / "clst-64-dns-pm01.img"
    recorded = Path(f"{image}.sha256").read_text().split()[0]
    before = sha256(image)
    assert before == recorded
    mtime = image.stat().st_mtime_ns
    proc = run_pibuild("smoke", "--board", str(image), "--log-dir", str(tmp_path), timeout=2400)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in smoke.BOARD_CHECKS:
        assert any(line.startswith("PASS") and line.split()[1] == name for line in lines), (name, proc.stdout)
    assert not any(line.startswith("FAIL") for line in lines)
    assert "login prompt after" in proc.stdout
    assert "smoke: PASS" in proc.stdout and "verdict after" in proc.stdout
    peer = "dns-pm01" if image.stem.endswith("dns-pm02") else "dns-pm02"
    assert f"waiting for {peer}" in proc.stdout  # the lone node waits for its peer
    assert list(tmp_path.iterdir()) == [], "the serial log of a passing run is removed without --keep-log"
    assert f"-M {machine} (TCG)" in proc.stderr and f"device tree {dtb}" in proc.stderr
    assert f"console {console}" in proc.stderr and "not checked here: the GPU firmware" in proc.stderr
    (grown,) = [line for line in lines if line.split()[1:2] == ["root-grown"]]
    sizes = re.search(r"(\d+) MiB in the image, now (\d+) MiB ending (\d+) MiB before the end of the (\d+) MiB card; "
                      r"ext4 (\d+) MiB", grown)
    image_mib, now_mib, slack_mib, card_mib, fs_mib = map(int, sizes.groups())
    assert card_mib << 20 > image.stat().st_size and now_mib > image_mib and slack_mib <= 1 and fs_mib > image_mib
    assert f"root shell on {console}" in proc.stdout
    assert sha256(image) == before, "the smoke run changed the image"
    assert image.stat().st_mtime_ns == mtime


def break_bind(image: Path) -> None:
    """A syntax error in the copy's named.conf.options, through an offset loop device."""
    layout = read_layout(image)
    with tempfile.TemporaryDirectory() as mnt:
        dev = subprocess.run(["losetup", "--find", "--show", "--offset", str(layout.root_offset), "--sizelimit",
                              str(layout.root_size), str(image)], check=True, capture_output=True,
                             text=True).stdout.strip()
        try:
            subprocess.run(["mount", dev, mnt], check=True)
            try:
                with open(Path(mnt) / "etc/bind/named.conf.options", "a") as f:
                    f.write("options { this is not BIND syntax\n")
            finally:
                subprocess.run(["umount", mnt], check=True)
        finally:
            subprocess.run(["losetup", "--detach", dev], check=True)


@pytest.mark.qemu
@needs_root
@needs_tools
def test_broken_bind_config_fails_naming_named(bullseye_image, tmp_path, clean_host):
    broken = tmp_path / "broken.img"
    subprocess.run(["cp", "--sparse=always", str(bullseye_image), str(broken)], check=True)
    break_bind(broken)
    logs = tmp_path / "logs"

    try:
        proc = run_pibuild("smoke", str(broken), "--log-dir", str(logs), timeout=1500)
    finally:
        broken.unlink()
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    named = [line for line in proc.stdout.splitlines() if line.split()[1:2] == ["named"]]
    assert named and named[0].startswith("FAIL"), proc.stdout
    assert "named.conf.options" in named[0], "the failure shows BIND's own error line"
    (failed,) = re.findall(r"smoke: FAIL: ([a-z, -]+) \(", proc.stderr)
    # named, and the failed unit it leaves once systemd gives up restarting it; the skipped wait is no failure.
    assert set(failed.split(", ")) in ({"named"}, {"named", "failed-units"}), proc.stderr
    # Once named failed, what would only be waited for is judged as it is (pcsd) or skipped (firstboot's wait).
    firstboot = [line for line in proc.stdout.splitlines() if line.split()[1:2] == ["firstboot"]]
    assert firstboot and firstboot[0].startswith("SKIP") and "named failed already" in firstboot[0], proc.stdout
    pcsd = [line for line in proc.stdout.splitlines() if line.split()[1:2] == ["pcsd"]]
    assert pcsd and pcsd[0].startswith(("PASS", "SKIP")), proc.stdout
    # The run stops waiting once BIND fails: a BIND restarting in a loop keeps systemd's boot from ever settling,
    # and a smoke run that waited for that (or for the lone node's pacemaker) would run out its 900 s budget.
    (verdict,) = re.findall(r"checks done ([0-9.]+) s after QEMU started", proc.stderr)
    assert float(verdict) < 600, proc.stderr
    for name in ("boot", "login", "hostname", "address"):
        assert any(line.startswith("PASS") and line.split()[1] == name for line in proc.stdout.splitlines()), name
    kept = list(logs.glob("pibuild-smoke-broken-*.log"))
    assert len(kept) == 1 and str(kept[0]) in proc.stderr, "a failed run names and keeps its serial log"
    assert "named.conf.options" in kept[0].read_text(errors="replace")


# ---- the VM layer without booting ----------------------------------------------------------------------------

# Opens the bundled example's image: the image tier, since it builds one when the cache is cold.
@pytest.mark.image
@needs_root
@needs_tools
def test_debian_image_argv_and_overlay_only_login(example_image, tmp_path, clean_host):
    before = sha256(example_image)
    vm = qemu.Vm(example_image, tmp_path / "vm", tmp_path / "serial.log", name="argv-test")
    try:
        vm.prepare()
        assert (vm.boot.mode, vm.boot.arch) == ("virt", "armhf")
        # `--board` boots each armhf model QEMU has a board for with its device tree from the boot partition.
        names = set(qemu.inspection.fat_files(example_image, read_layout(example_image)))
        assert {m.dtb for m in MODELS.values() if "armhf" in m.qemu_boards} <= names
        assert vm.node.name == NODE and vm.node.address == "192.168.100.1/24" and vm.node.interface == "eth0"
        argv = vm.argv
        assert argv[0] == "qemu-system-arm"
        assert argv[argv.index("-M") + 1] == "virt,highmem=off"
        assert "virtio-blk-device,drive=disk0" in argv and any(a.startswith("virtio-net-device,") for a in argv)
        assert not any("if=virtio" in a for a in argv), "armhf's non-LPAE kernel sees no PCI disk"
        append = argv[argv.index("-append") + 1]
        assert "console=ttyAMA0,115200" in append and "console=tty0" not in append
        assert "init_on_alloc=0" in append.split(), "TCG-only: Debian's kernels zero every page they allocate"
        assert f"root=PARTUUID={read_layout(example_image).disk_id}-02" in append
        info = subprocess.run(["qemu-img", "info", "--output=json", str(vm.overlay)], capture_output=True,
                              text=True, check=True).stdout
        assert str(example_image.resolve()) in info
        # The overlay holds the autologin drop-in (it changed: it has allocated clusters of its own) ...
        assert b"autologin root" in vm.overlay.read_bytes()
    finally:
        vm.stop()
    # ... and the image does not.
    assert sha256(example_image) == before
    assert not vm.overlay.exists()


def _fake_image(path: Path, arch: str, fat: dict[str, str], root_files: dict[str, str]) -> None:
    """A Raspberry Pi-shaped image: a FAT holding `fat` (name: content) and an ext4 with an ARM dpkg and
    `root_files` (path: content). Nothing in it boots; the VM layer reads it without booting."""
    size_mib, boot = 80, (8192, 32768)
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    root_start = boot[0] + boot[1]
    subprocess.run(["sfdisk", "-q", str(path)], check=True, text=True,
                   input=f"label: dos\nlabel-id: 0x1234abcd\nstart={boot[0]}, size={boot[1]}, type=c\n"
                         f"start={root_start}, type=83\n")
    subprocess.run(["mkfs.vfat", "--offset", str(boot[0]), str(path), str(boot[1] // 2)], check=True,
                   capture_output=True)
    files = path.parent / f"fat-{path.stem}"
    files.mkdir()
    for name, content in fat.items():
        (files / name).write_text(content)
    subprocess.run(["mcopy", "-i", f"{path}@@{boot[0] * 512}", *map(str, files.iterdir()), "::/"], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    root = path.parent / f"root-{path.stem}"
    (root / "usr/bin").mkdir(parents=True)
    machine = {"armhf": 0x28, "arm64": 0xB7}[arch]
    elf_class = 1 if arch == "armhf" else 2
    header = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9) + (2).to_bytes(2, "little")
    header += machine.to_bytes(2, "little")
    (root / "usr/bin/dpkg").write_bytes(header + bytes(44))
    for name, content in {"etc/hostname": "raspberrypi\n", **root_files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={root_start * 512}", "-d", str(root),
                    str(path), f"{(size_mib << 10) - root_start // 2}k"], check=True)


def _fake_raspios(path: Path, arch: str) -> None:
    """A Raspberry Pi OS-shaped image: kernel7/8.img and bcm27xx device trees in the FAT, an ARM dpkg in ext4."""
    fat = {name: "stub" for name in ("kernel.img", "kernel7.img", "kernel7l.img", "kernel8.img",
                                     "bcm2709-rpi-2-b.dtb", "bcm2710-rpi-3-b.dtb", "bcm2711-rpi-4-b.dtb",
                                     "config.txt")}
    fat["cmdline.txt"] = ("console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootfstype=ext4 "
                          "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n")
    _fake_image(path, arch, fat, {})


def _fake_debian(path: Path, arch: str, model: str | None) -> None:
    """A debian-base node image as pibuild writes one: Debian's kernel named in config.txt, raspi-firmware's
    upstream device trees, the node's plan (with its model unless None) and its NetworkManager keyfile."""
    flavour = {"armhf": "6.1.0-50-armmp", "arm64": "6.12.117+deb13-arm64"}[arch]
    fat = {name: "stub" for name in (f"vmlinuz-{flavour}", f"initrd.img-{flavour}", "bcm2836-rpi-2-b.dtb",
                                     "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-zero-2-w.dtb", "bcm2711-rpi-4-b.dtb")}
    fat["config.txt"] = f"enable_uart=1\nupstream_kernel=1\nkernel=vmlinuz-{flavour}\ninitramfs initrd.img-{flavour}\n"
    fat["cmdline.txt"] = ("console=tty0 console=ttyAMA0,115200 console=ttyS1,115200 root=PARTUUID=1234abcd-02 rw "
                          "fsck.repair=yes net.ifnames=0 cma=64M rootwait\n")
    plan = {"node": "dns-pm02", "nodes": [{"name": "dns-pm01"}, {"name": "dns-pm02"}]}
    if model:
        plan["model"] = model
    _fake_image(path, arch, fat, {
        "etc/pibuild/firstboot.json": json.dumps(plan),
        "etc/NetworkManager/system-connections/eth0.nmconnection":
            "[connection]\ninterface-name=eth0\n[ipv4]\nmethod=manual\naddress1=192.168.100.2/24\n",
    })


@needs_root
@needs_tools
@pytest.mark.parametrize("arch,machine,kernel,dtb", [
    ("armhf", "raspi2b", "kernel7.img", "bcm2709-rpi-2-b.dtb"),
    ("arm64", "raspi3b", "kernel8.img", "bcm2710-rpi-3-b.dtb"),
])
def test_raspios_image_uses_the_raspi_machine(tmp_path, clean_host, arch, machine, kernel, dtb):
    image = tmp_path / "raspios.img"
    _fake_raspios(image, arch)
    before = sha256(image)
    vm = qemu.Vm(image, tmp_path / "vm", tmp_path / "serial.log", name="raspi-test")
    try:
        vm.prepare()
        assert (vm.boot.mode, vm.boot.arch, vm.boot.kernel, vm.boot.dtb) == ("raspi", arch, kernel, dtb)
        argv = vm.argv
        assert argv[argv.index("-M") + 1] == machine
        assert argv[argv.index("-kernel") + 1].endswith(kernel) and argv[argv.index("-dtb") + 1].endswith(dtb)
        assert any(a.startswith("if=sd,") for a in argv) and any(a.startswith("usb-net,") for a in argv)
        append = argv[argv.index("-append") + 1]
        assert "init=" not in append and "console=serial0" not in append and "console=ttyAMA0,115200" in append
        # TCG-only speed-ups on the emulated command line, never in the image's cmdline.txt (issue 14).
        tuning = {"armhf": ["init_on_alloc=0"], "arm64": ["init_on_alloc=0", "kpti=0", "nokaslr"]}[arch]
        assert all(option in append.split() for option in tuning)
        untuned = qemu.Vm(image, tmp_path / "vm", tmp_path / "serial.log", name="raspi-test", tcg_tuning=False)
        untuned.boot = vm.boot
        assert not set(tuning) & set(untuned.qemu_argv()[untuned.qemu_argv().index("-append") + 1].split())
        info = subprocess.run(["qemu-img", "info", "--output=json", str(vm.overlay)], capture_output=True,
                              text=True, check=True).stdout
        virtual = int(info.split('"virtual-size":')[1].split(",")[0])
        assert virtual >= image.stat().st_size and virtual & (virtual - 1) == 0, "the SD card is a power of two"
    finally:
        vm.stop()
    assert sha256(image) == before


@needs_root
@needs_tools
@pytest.mark.parametrize("arch,model,machine,dtb,console", [
    ("armhf", "pi2b", "raspi2b", "bcm2836-rpi-2-b.dtb", "ttyAMA0"),
    ("arm64", "pi3b", "raspi3b", "bcm2837-rpi-3-b.dtb", "ttyS1"),
    # QEMU's raspi3b runs no 32-bit kernel: an armhf Pi 3 boots on raspi2b with its own device tree.
    ("armhf", "pizero2w", "raspi2b", "bcm2837-rpi-zero-2-w.dtb", "ttyS1"),
])
def test_board_boots_the_debian_kernel_on_the_models_board(tmp_path, clean_host, arch, model, machine, dtb, console):
    image = tmp_path / "node.img"
    _fake_debian(image, arch, model)
    before = sha256(image)
    vm = qemu.Vm(image, tmp_path / "vm", tmp_path / "serial.log", name="board-test", board=True)
    try:
        vm.prepare()
        assert (vm.boot.mode, vm.boot.machine, vm.boot.dtb, vm.boot.console) == ("raspi", machine, dtb, console)
        assert vm.boot.kernel.startswith("vmlinuz-") and vm.boot.initrd.startswith("initrd.img-")
        argv = vm.argv
        assert argv[0] == {"raspi2b": "qemu-system-arm", "raspi3b": "qemu-system-aarch64"}[machine]
        assert argv[argv.index("-M") + 1] == machine and argv[argv.index("-dtb") + 1].endswith(dtb)
        assert any(a.startswith("if=sd,") for a in argv) and any(a.startswith("usb-net,") for a in argv)
        # The console's UART is the board's first (PL011) or second (mini UART): QEMU fills -serial in that order.
        serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
        assert serials == ["null"] * ("ttyAMA0", "ttyS1").index(console) + ["chardev:console"]
        append = argv[argv.index("-append") + 1].split()
        assert [w for w in append if w.startswith("console=")] == [f"console={console},115200"]
        assert "root=PARTUUID=1234abcd-02" in append and "init_on_alloc=0" in append
        # The SD card is larger than the image (room to grow) and a power of two (QEMU's SD card).
        assert vm.sd_card_size > image.stat().st_size and vm.sd_card_size & (vm.sd_card_size - 1) == 0
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(vm.overlay)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["virtual-size"] == vm.sd_card_size
        # The overlay names the USB NIC as the node's interface (by its driver: cdc_subset gives it a random MAC)
        # and logs in on the board's console.
        (tmp_path / "look").mkdir()
        with overlay_root(vm.overlay, vm.layout, tmp_path / "look") as root:
            link = (root / "etc/systemd/network/10-pibuild-board-nic.link").read_text().splitlines()
            assert "Driver=cdc_subset cdc_ether rndis_host" in link and "Name=eth0" in link
            assert (root / f"etc/systemd/system/serial-getty@{console}.service.d/pibuild-autologin.conf").is_file()
    finally:
        vm.stop()
    assert sha256(image) == before


@needs_root
@needs_tools
@pytest.mark.parametrize("arch,model,wanted", [
    ("arm64", "pi4b", "nodes[].model pi4b (Raspberry Pi 4 Model B, arm64): QEMU has no board"),
    ("arm64", "pi5", "nodes[].model pi5 (Raspberry Pi 5, arm64): QEMU has no board"),
    ("armhf", None, "does not say which Raspberry Pi model"),
])
def test_board_refuses_a_model_qemu_cannot_emulate(tmp_path, clean_host, arch, model, wanted):
    image = tmp_path / "node.img"
    _fake_debian(image, arch, model)
    proc = run_pibuild("smoke", "--board", str(image), "--log-dir", str(tmp_path / "logs"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert wanted in proc.stderr and "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if "error" in line.lower() or wanted in line]
    assert len(message) == 1, proc.stderr
    if model:
        assert "without --board (QEMU's virt machine)" in proc.stderr, "it names the closest check available"


def test_own_kernel_without_board_is_a_usage_error(tmp_path):
    image = tmp_path / "node.img"
    image.write_bytes(b"")
    proc = run_pibuild("smoke", "--own-kernel", str(image))
    assert proc.returncode == 2 and "--own-kernel applies with --board only" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_model_qemu_boots_has_a_device_tree_and_console():
    """The issue's mapping, from the one table: pi2b on raspi2b; the Pi 3 family on raspi3b (arm64) or raspi2b
    (armhf); the Pi 1, Zero, 4 and 5 families on none."""
    boards = {name: m.qemu_boards for name, m in MODELS.items() if m.qemu_boards}
    assert boards == {"pi2b": {"armhf": "raspi2b"},
                      **{m: {"armhf": "raspi2b", "arm64": "raspi3b"} for m in ("pi3b", "pi3b+", "pi3a+", "pizero2w")}}
    for name in boards:
        model = MODELS[name]
        assert model.dtb and model.dtb.startswith(("bcm2836-", "bcm2837-")), name
        assert model.uart in QEMU_BOARDS["raspi2b"].uarts and set(model.qemu_boards) <= set(model.arches)


def test_console_output_comes_without_terminal_colours():
    """Console.run against a real shell: output between its markers, exit status, and no colour sequences (trixie's
    `ip` colours its addresses on any terminal, and a check compares them as text)."""
    child = pexpect.spawn("bash", ["--norc", "--noprofile"], encoding="utf-8", timeout=10,
                          env={"PATH": os.environ["PATH"], "PS1": "$ "})
    try:
        console = qemu.Console(child)
        console.run("stty -echo", timeout=10)
        rc, out = console.run(r"printf '2: eth0    inet \033[35m192.168.100.1\033[0m/24 brd\n'; false", timeout=10)
        assert (rc, out) == (1, "2: eth0    inet 192.168.100.1/24 brd")
        assert "NO_COLOR=1" in qemu.Console.SHELL_SETUP
    finally:
        child.close(force=True)


def test_guest_cmdline():
    line = "console=serial0,115200 console=tty1 root=PARTUUID=ab-02 rootwait init=/usr/lib/x/firstboot quiet"
    assert qemu.guest_cmdline(line, "ttyAMA0", ("a=b",)) == \
        "root=PARTUUID=ab-02 rootwait quiet console=ttyAMA0,115200 a=b"


@pytest.mark.parametrize("peers", [["dns-pm02"], ["dns-pm02", "dns-pm03"]])
def test_the_firstboot_wait_ends_at_the_wait_for_a_peer_not_at_a_local_one(peers):
    """A lone node waits for its own pcsd, corosync.conf and pacemaker on the way; the smoke check's awk (run here by
    the real awk over the lines the firstboot script writes) must read past those and stop at the wait for a peer."""
    plan = {"node": "dns-pm01", "nodes": [{"name": n} for n in ["dns-pm01", *peers]]}
    journal = "\n".join([
        "node dns-pm01 of cluster clst-01 (the initiator; pcs 0.11.5)",
        "waiting for the local pcsd to accept connections on TCP 2224",
        "waiting for this node's corosync.conf to describe cluster clst-01",
        "waiting for pacemaker to answer here (`cibadmin --query --scope resources` exited 102: Could not connect)",
        "failed: `pcs host auth` timed out; retrying in 5 s (requests to other nodes now wait up to 60 s)",
        "waiting for dns-pm01x to come online in cluster clst-01",  # not a peer: a prefix of no node's name
        f"waiting for {', '.join(peers)} to come online in cluster clst-01",
        "waiting for resources dns-ip-1 to appear in the live CIB",
    ]) + "\n"
    out = subprocess.run(["awk", smoke.firstboot_awk(plan)], input=journal, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == [
        "failed: `pcs host auth` timed out; retrying in 5 s (requests to other nodes now wait up to 60 s)",
        f"waiting for {', '.join(peers)} to come online in cluster clst-01"]


FAKE_SYSTEMCTL = """#!/bin/sh
# Answers as systemd would at the n-th poll: starting, starting, then the state in $SETTLE_THEN.
n=$(cat "$STATE_DIR/polls" 2>/dev/null || echo 0)
case "$1" in
is-system-running)
  n=$((n + 1)); echo "$n" > "$STATE_DIR/polls"
  if [ "$n" -lt 3 ]; then echo starting; else echo "$SETTLE_THEN"; fi ;;
list-units)
  # --state=failed,auto-restart: BIND cycling through restarts from the second poll on, if asked for.
  if [ -n "$FAILING_FROM" ] && [ "$n" -ge "$FAILING_FROM" ]; then
    echo "named.service loaded activating auto-restart BIND"
  fi ;;
esac
"""


@pytest.mark.parametrize("then,failing_from,polls,said", [
    ("running", "", 3, ["state=running"]),                                   # the queue emptied
    ("degraded", "", 3, ["state=degraded"]),                                 # done, a unit failed
    ("starting", "2", 2, ["failing: named.service", "state=starting"]),     # never settles: stops at the failure
])
def test_settling_ends_at_an_empty_queue_or_at_the_first_failing_unit(tmp_path, then, failing_from, polls, said):
    """The smoke run's wait for the boot (run here by the real sh, with systemctl answering from a script)."""
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "STATE_DIR": str(tmp_path), "SETTLE_THEN": then,
           "FAILING_FROM": failing_from}
    out = subprocess.run(["timeout", "60", "sh", "-c", smoke.SETTLE_SCRIPT.replace("sleep 3", "sleep 0.1")],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == said
    assert (tmp_path / "polls").read_text().strip() == str(polls)


@pytest.mark.parametrize("out,verdict", [
    ("active\n", True),
    ("failed\n", False),
    ("inactive\n", False),                                               # never started, nothing queued
    ("inactive\n212 pcsd.service start waiting\n", None),                # not yet started: wait
    ("activating\n212 pcsd.service start running\n", None),
])
def test_a_unit_whose_start_is_still_queued_is_waited_for(out, verdict):
    assert smoke._active(0, out) is verdict


def test_a_skipped_check_is_no_failure_but_no_pass_either(tmp_path):
    report = smoke.SmokeReport(image=tmp_path / "a.img", serial_log=tmp_path / "a.log", checks=[
        smoke.Check("named", False, "failed"), smoke.Check("firstboot", None, "not awaited", 12.0)])
    assert report.failed == ["named"] and not report.ok
    assert report.checks[1].line().startswith("SKIP  firstboot")
    assert not smoke.SmokeReport(image=tmp_path / "a.img", serial_log=tmp_path / "a.log",
                                 checks=[smoke.Check("firstboot", None, "not awaited")]).ok


def test_the_vm_layer_does_not_import_the_build():
    """builder.qemu reads an image's layout through builder.layout, not through the image builder (and its stack)."""
    code = "import sys, builder.qemu; print(' '.join(sorted(m for m in sys.modules if m.startswith('builder.'))))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    loaded = set(proc.stdout.split())
    assert "builder.qemu.vm" in loaded and "builder.layout" in loaded
    assert not loaded & {"builder.image", "builder.base", "builder.stages", "builder.chroot", "builder.config"}


# ---- .img.xz -------------------------------------------------------------------------------------------------

@needs_root
@needs_tools
def test_smoke_boots_an_img_xz_decompressed_in_its_throwaway_directory(tmp_path, clean_host, monkeypatch):
    """The .img.xz is decompressed into smoke's own directory and that copy is prepared for QEMU for real (boot
    files read, overlay on the copy); QEMU's start is the seam that stops the run. Nothing is left, the .img.xz
    is unchanged."""
    from builder import compress, progress, smoke
    from builder.errors import PibuildError

    image = tmp_path / "raspios.img"
    _fake_raspios(image, "arm64")
    want = sha256(image)
    xz = compress.compress(image)
    os.unlink(image)
    before = sha256(xz)
    seen = {}

    def start(vm):
        seen["image"], seen["sha256"], seen["mode"] = vm.image, sha256(vm.image), vm.boot.mode
        raise PibuildError("stopped before QEMU (test)")

    monkeypatch.setattr(qemu.Vm, "start", start)
    said: list[str] = []
    with pytest.raises(PibuildError, match="stopped before QEMU"), progress.using(progress.Reporter(said.append)):
        smoke.smoke(xz, log_dir=tmp_path / "logs")
    assert seen["image"].name == "raspios.img" and seen["image"].parent != tmp_path
    assert seen["sha256"] == want and seen["mode"] == "raspi"
    assert not seen["image"].exists()
    assert any("decompressing" in line for line in said)
    assert sha256(xz) == before


@needs_root
def test_smoke_of_a_damaged_img_xz_names_it(tmp_path, clean_host):
    import lzma

    from builder import smoke
    from builder.errors import PibuildError

    bad = tmp_path / "node.img.xz"
    bad.write_bytes(lzma.compress(bytes(1 << 20))[:-16])
    with pytest.raises(PibuildError, match="node.img.xz: xz could not decompress it"):
        smoke.smoke(bad, log_dir=tmp_path / "logs")
