"""Image tier: build both nodes of a trixie arm64 debian-base cluster and one node of a bullseye armhf one for real,
then open the images (the bundled example is the bookworm armhf build; the qemu and lab tiers boot all three).

The partition table through sfdisk, the FAT partition through mtools and the ext4 partition through an offset
loop device (these machines have no vfat module and no loop partition scanning).
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO, loop_devices, mounts, run_pibuild

from builder import base, cache, config, emulation, secrets
from builder import image as image_mod
from builder.plan import MONITOR_COLOCATION_SCORE
from builder.releases import MODELS, RELEASES

pytestmark = [pytest.mark.image, pytest.mark.usefixtures("needs_image_tools")]

NODES = ("dns-pm01", "dns-pm02")
CLUSTER_PACKAGES = ("pacemaker", "pacemaker-cli-utils", "pcs", "resource-agents", "corosync", "bind9",
                    "bind9-dnsutils", "raspi-firmware", "linux-image-arm64", "network-manager", "openssh-server",
                    "sudo")


@pytest.fixture(scope="session")
def build(arm64_cluster):
    """Both nodes of tests/configs/arm64.yaml (conftest's arm64_cluster, which the qemu tier boots too)."""
    return arm64_cluster


@pytest.fixture(params=["trixie-arm64", "bullseye-armhf"])
def release_node(request) -> tuple[Path, str, str]:
    """dns-pm01 of the newest and of the oldest release, with its arch and release: what differs between releases is
    checked on both (each release's own pcs and Pacemaker on the plan, its network backend)."""
    release, arch = request.param.split("-")
    if release == "trixie":
        return image(request.getfixturevalue("build"), "dns-pm01"), arch, release
    return request.getfixturevalue("bullseye_image"), arch, release


def image(build, node: str) -> Path:
    return build["out"] / f"clst-64-{node}.img"


def layout(img: Path) -> dict:
    return json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                                     check=True).stdout)["partitiontable"]


@contextlib.contextmanager
def rootfs(img: Path):
    """The image's ext4, mounted read-only through an offset loop device."""
    part = layout(img)["partitions"][1]
    offset, size = part["start"] * 512, part["size"] * 512
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", "--offset", str(offset), "--sizelimit",
                          str(size), str(img)], capture_output=True, text=True, check=True).stdout.strip()
    mnt = Path(tempfile.mkdtemp(prefix="pibuild-test-"))
    try:
        subprocess.run(["mount", "-o", "ro", dev, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
        mnt.rmdir()


def fat_read(img: Path, name: str) -> bytes:
    offset = layout(img)["partitions"][0]["start"] * 512
    return subprocess.run(["mtype", "-i", f"{img}@@{offset}", f"::{name}"], capture_output=True, check=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout


def fat_list(img: Path) -> list[str]:
    offset = layout(img)["partitions"][0]["start"] * 512
    out = subprocess.run(["mdir", "-b", "-i", f"{img}@@{offset}", "::/"], capture_output=True, text=True,
                         check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    return [line.strip().removeprefix("::/") for line in out.splitlines() if line.strip()]


def test_outputs_are_complete_and_verified(build):
    for node in NODES:
        img = image(build, node)
        assert img.is_file()
        sums = subprocess.run(["sha256sum", "-c", img.name + ".sha256"], cwd=build["out"], capture_output=True,
                              text=True)
        assert sums.returncode == 0, sums.stdout + sums.stderr
        bmap = ET.parse(str(img) + ".bmap").getroot()
        mapped = int(bmap.findtext("MappedBlocksCount"))
        total = int(bmap.findtext("BlocksCount"))
        assert 0 < mapped < total, "a sparse image maps fewer blocks than it has"
    assert not list(build["out"].glob("*.partial-*")), "no temporary output left"


def test_images_are_secret_material_and_say_so(build):
    # `-o out` did not exist: pibuild made it, its owner's alone. Images carry secrets, sidecars do not.
    assert build["out"].stat().st_mode & 0o777 == 0o700
    for node in NODES:
        img = image(build, node)
        assert img.stat().st_mode & 0o777 == 0o600
        for sidecar in (".sha256", ".bmap"):
            assert Path(str(img) + sidecar).stat().st_mode & 0o777 == 0o644
        assert (build["out"] / f"clst-64-{node}.manifest").stat().st_mode & 0o777 == 0o644
    assert cache.cache_root().stat().st_mode & 0o777 == 0o700
    assert f"{Path('out') / 'clst-64-dns-pm01.img'} holds the hacluster password in plaintext" in build["stderr"]
    assert "secrets/hacluster" in build["stderr"]


def test_manifests_list_the_cluster_packages_identically_on_every_node(build):
    manifests = [(build["out"] / f"clst-64-{n}.manifest").read_text() for n in NODES]
    assert manifests[0] == manifests[1], "every node carries byte-identical package sets"
    names = dict(line.split(" ", 1) for line in manifests[0].splitlines())
    for pkg in CLUSTER_PACKAGES:
        assert pkg in names, f"{pkg} missing from the manifest"


def test_partition_table_is_raspberry_pi_os_like(build):
    for node in NODES:
        table = layout(image(build, node))
        assert table["label"] == "dos"
        boot, root = table["partitions"]
        assert boot["type"] == "c" and boot["start"] == 8192
        assert root["type"] == "83" and root["start"] == boot["start"] + boot["size"]
    ids = {layout(image(build, n))["id"] for n in NODES}
    assert len(ids) == 1, "nodes are copies of one cluster image"


def test_boot_partition_holds_firmware_kernel_and_a_matching_cmdline(build):
    img = image(build, "dns-pm01")
    disk_id = layout(img)["id"].removeprefix("0x")
    names = fat_list(img)
    for wanted in ("bootcode.bin", "start.elf", "config.txt", "cmdline.txt"):
        assert wanted in names
    assert any(n.startswith("vmlinuz-") and n.endswith("-arm64") for n in names), names
    assert any(n.startswith("initrd.img-") for n in names), names
    assert any(n.startswith("bcm2837-rpi-3-b") for n in names), "the Pi 3B device tree"
    # `pibuild smoke --board` boots each arm64 model QEMU has a board for with its device tree from here.
    assert {m.dtb for m in MODELS.values() if "arm64" in m.qemu_boards} <= set(names)
    cmdline = fat_read(img, "cmdline.txt").decode()
    assert f"root=PARTUUID={disk_id}-02" in cmdline
    # A serial console on the header's UART (config.txt's enable_uart=1), the Pi 2's and the Pi 3's, and the screen.
    consoles = [w.removeprefix("console=") for w in cmdline.split() if w.startswith("console=")]
    assert {"tty0", "ttyAMA0,115200", "ttyS1,115200"} <= set(consoles), cmdline
    config_txt = fat_read(img, "config.txt").decode()
    assert "kernel=vmlinuz-" in config_txt and "initramfs initrd.img-" in config_txt


def test_initramfs_carries_the_boot_modules_and_loads_none_by_list(release_node, tmp_path):
    """The modules for the SD card, USB disks, ext4 and QEMU's virtio are in the initramfs, but its conf/modules
    (what initramfs-tools loads at every boot, hardware or not) is empty: udev loads what the board has. On both
    layouts of /lib: bullseye keeps the modules in a /lib of its own (its first build carried none)."""
    img, _, _ = release_node
    (name,) = [n for n in fat_list(img) if n.startswith("initrd.img-")]
    initrd = tmp_path / name
    initrd.write_bytes(fat_read(img, name))
    cpio = emulation.initramfs_cpio(initrd)
    files = subprocess.run(["cpio", "-it", "--quiet"], input=cpio, capture_output=True, check=True).stdout.decode()
    carried = {Path(f).name.split(".ko")[0] for f in files.split() if ".ko" in f}
    # (mmc_block and the Pi's own SD hosts are built into Debian's arm64 kernel.)
    assert {"sdhci-iproc", "dwc2", "usb-storage", "sd_mod", "virtio_blk", "ext4"} <= carried, sorted(carried)
    forced = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "conf/modules"], input=cpio,
                            capture_output=True, check=True).stdout.decode()
    assert [line for line in forced.splitlines() if line.strip() and not line.startswith("#")] == []


def test_root_filesystem_holds_the_node_files(build):
    for i, node in enumerate(NODES):
        img = image(build, node)
        disk_id = layout(img)["id"].removeprefix("0x")
        with rootfs(img) as root:
            assert (root / "etc/hostname").read_text() == f"{node}\n"
            hosts = (root / "etc/hosts").read_text()
            assert f"127.0.1.1\t{node}" in hosts
            assert "# Pacemaker Settings\n192.168.100.1\tdns-pm01\n192.168.100.2\tdns-pm02\n" in hosts
            keyfile = root / "etc/NetworkManager/system-connections/pibuild-static.nmconnection"
            assert (keyfile.stat().st_mode & 0o777, keyfile.stat().st_uid) == (0o600, 0)
            nm = configparser.ConfigParser()
            nm.read_string(keyfile.read_text())
            assert nm["ipv4"]["method"] == "manual"
            assert nm["ipv4"]["address1"] == f"192.168.100.{i + 1}/24,192.168.100.254"
            agent = root / "usr/lib/ocf/resource.d/pibuild/named2"
            assert agent.stat().st_mode & 0o777 == 0o755
            # pcsd on the node's own address and loopback only, never on a VIP; its unit reads that file.
            pcsd_defaults = (root / "etc/default/pcsd").read_text().splitlines()
            assert f"PCSD_BIND_ADDR='192.168.100.{i + 1},127.0.0.1,127.0.1.1'" in pcsd_defaults
            assert "RACK_ENV=production" in pcsd_defaults
            assert "PCSD_WORKER_COUNT=2" in pcsd_defaults, "not pcs's ten workers, which starve an emulated node"
            assert "EnvironmentFile=/etc/default/pcsd" in (root / "lib/systemd/system/pcsd.service").read_text()
            fstab = (root / "etc/fstab").read_text()
            assert f"PARTUUID={disk_id}-01" in fstab and f"PARTUUID={disk_id}-02" in fstab
            plan = json.loads((root / "etc/pibuild/firstboot.json").read_text())
            assert plan["node"] == node and plan["cluster"] == "clst-64"
            assert any(Path(root, "boot").glob("initrd.img-*")), "the initramfs was generated"


def test_each_release_has_its_address_backend_bind_scan_and_the_pcs_its_plan_is_written_for(release_node):
    """The per-release table (builder/releases.py) against what the release's packages really are."""
    img, _, name = release_node
    release = RELEASES[name]
    versions = dict(line.split(" ", 1) for line in img.with_suffix(".manifest").read_text().splitlines())
    assert versions["pcs"].startswith(release.pcs.version), (versions["pcs"], release.pcs.version)
    disk_id = layout(img)["id"].removeprefix("0x")
    with rootfs(img) as root:
        keyfile = root / "etc/NetworkManager/system-connections/pibuild-static.nmconnection"
        if release.network_backend == "dhcpcd":
            assert "dhcpcd5" in versions and "network-manager" not in versions
            dhcpcd = (root / "etc/dhcpcd.conf").read_text()
            assert "interface eth0\nstatic ip_address=192.168.100.1/24\nstatic routers=192.168.100.254\n" in dhcpcd
            assert not keyfile.exists()
            assert (root / "etc/systemd/system/multi-user.target.wants/dhcpcd.service").is_symlink()
        else:
            assert "network-manager" in versions and "dhcpcd5" not in versions
            assert "address1=192.168.100.1/24,192.168.100.254" in keyfile.read_text()
        dropin = root / "etc/cloud/cloud.cfg.d/99-pibuild.cfg"
        if "cloud-init" in release.first_boot_hooks:
            assert {"preserve_hostname: true", "manage_etc_hosts: false", "  config: disabled"} <= set(
                dropin.read_text().splitlines())
        else:
            assert not dropin.exists()
        # Debian's raspi-firmware installs to /boot/firmware on every release (Raspberry Pi OS bullseye used /boot).
        assert f"PARTUUID={disk_id}-01  {base.DEBIAN_BOOT_MOUNT}  vfat" in (root / "etc/fstab").read_text()
        assert release.bind_interface_scan in (root / "etc/bind/named.conf.options").read_text()
        # The root partition's growth on first boot: growpart calls sfdisk (bullseye's first image had none).
        assert any(os.path.lexists(root / d / "sfdisk") for d in ("sbin", "usr/sbin"))
        # A console login (agetty runs /bin/login; trixie's mmdebstrap base had none).
        assert any(os.path.lexists(root / d / "login") for d in ("bin", "usr/bin"))


def test_services_firstboot_enabled_default_cluster_kept_off(build):
    with rootfs(image(build, "dns-pm02")) as root:
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert os.readlink(wants / "pibuild-firstboot.service") == "/etc/systemd/system/pibuild-firstboot.service"
        assert (root / "etc/systemd/system/pibuild-firstboot.service").is_file()
        assert (root / "usr/lib/pibuild/pibuild-firstboot").stat().st_mode & 0o111
        # Links are absolute paths inside the image: look at the links, never through them to the build host.
        for unit in ("pcsd.service", "named.service", "ssh.service"):
            assert (wants / unit).is_symlink(), f"{unit} enabled"
            assert (root / os.readlink(wants / unit).lstrip("/")).is_file()
        for unit in ("corosync.service", "pacemaker.service"):
            assert not (wants / unit).is_symlink(), f"{unit} must wait for firstboot"
            assert (root / "lib/systemd/system" / unit).is_file(), f"{unit} is installed"
        # Debian's default one-node cluster is gone, so firstboot has nothing to `pcs cluster destroy`.
        assert not (root / "etc/corosync/corosync.conf").exists()
        assert not any((root / "var/lib/pacemaker/cib").glob("cib*"))
        assert (root / "etc/systemd/system/sysinit.target.wants/pibuild-expand-rootfs.service").is_symlink()
        assert os.readlink(root / "etc/systemd/system/userconfig.service") == "/dev/null"
        assert not (root / "usr/sbin/policy-rc.d").exists(), "the build chroot's policy must not ship"
        assert (root / "usr/sbin/update-initramfs").exists() and not (
            root / "usr/sbin/update-initramfs.distrib").exists(), "the initramfs deferral is undone"


def test_hacluster_password_and_login_user(build):
    password = (build["dir"] / "secrets/hacluster").read_text().strip()
    assert (build["dir"] / "secrets/hacluster").stat().st_mode & 0o777 == 0o600
    for node in NODES:
        with rootfs(image(build, node)) as root:
            shadow = {line.split(":")[0]: line.split(":")[1] for line in (root / "etc/shadow").read_text().splitlines()}
            stored = shadow["hacluster"]
            assert stored.startswith("$6$")
            salt = stored.split("$")[2]
            again = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password + "\n",
                                   capture_output=True, text=True, check=True).stdout.strip()
            assert again == stored, "the hash in the image is the secret's"
            assert shadow["admin"].startswith("$6$pibuildsalt$")
            keys = (root / "home/admin/.ssh/authorized_keys").read_text()
            assert "test@pibuild" in keys
            assert "sudo" in next(line for line in (root / "etc/group").read_text().splitlines()
                                  if line.startswith("sudo:"))
            secret = root / "etc/pibuild/hacluster-password"
            if node == "dns-pm01":
                assert secret.read_text().strip() == password and secret.stat().st_mode & 0o777 == 0o600
            else:
                assert not secret.exists(), "only the initiator needs the plaintext"


def test_every_node_carries_the_cluster_key_and_makes_the_same_corosync_conf(build):
    """What lets a reflashed card rejoin by itself: every image holds the cluster's corosync authkey (0400, the key
    derived from secrets/corosync-key), and each image's own pcs, running the plan's local `pcs cluster setup`,
    makes the same corosync.conf byte for byte (no random cluster_uuid), so no node needs another to hand it one."""
    cluster = config.load(build["dir"] / "cluster.yaml")
    secret = build["dir"] / "secrets/corosync-key"
    assert secret.stat().st_mode & 0o777 == 0o600
    expected = secrets.corosync_authkey(secret, cluster.name, [(n.name, n.address) for n in cluster.nodes])
    made = {}
    for node in NODES:
        with rootfs(image(build, node)) as root, pcs_sandbox(root):
            key = root / "etc/pibuild/corosync-authkey"
            assert key.read_bytes() == expected and key.stat().st_mode & 0o777 == 0o400
            assert key.stat().st_uid == 0
            setup = json.loads((root / "etc/pibuild/firstboot.json").read_text())["commands"]["setup"]
            i = setup.index("--corosync_conf")
            setup[i + 1] = "/tmp/corosync.conf"  # the root is mounted read-only here
            proc = subprocess.run(["chroot", str(root), *setup], capture_output=True, text=True, timeout=600,
                                  env=chroot_env("arm64"))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            made[node] = (root / "tmp/corosync.conf").read_text()
    assert made["dns-pm01"] == made["dns-pm02"]
    conf = made["dns-pm01"]
    assert "cluster_uuid" not in conf
    assert "cluster_name: clst-64" in conf and "token: 1000" in conf
    assert "crypto_cipher: aes256" in conf, "knet with crypto: the authkey is what admits a node"
    assert [line.split(":")[1].strip() for line in conf.splitlines() if line.strip().startswith("name:")] == \
        list(NODES)


def test_machine_id_is_the_bases(build):
    ids = []
    for node in NODES:
        with rootfs(image(build, node)) as root:
            ids.append((root / "etc/machine-id").read_bytes())
    assert ids[0] == ids[1]
    assert ids[0].strip() in (b"", b"uninitialized"), "left for systemd to create on first boot"


def test_nothing_left_behind_by_the_build(build):
    assert loop_devices() <= build["loops_before"]
    assert mounts() <= build["mounts_before"]


def test_rebuild_with_nothing_changed_is_a_no_op(build):
    before = {p.name: p.stat().st_mtime_ns for p in build["out"].iterdir()}
    proc = run_pibuild("all", "-o", "out", cwd=build["dir"], check=True)
    assert proc.stderr.count("up to date") == 2
    assert {p.name: p.stat().st_mtime_ns for p in build["out"].iterdir()} == before


def test_another_node_comes_from_the_warm_cache(build):
    proc = run_pibuild("node", "dns-pm02", "-o", "other", cwd=build["dir"], check=True)
    assert "cluster image: cached" in proc.stderr
    assert "mmdebstrap" not in proc.stderr
    other = build["dir"] / "other/clst-64-dns-pm02.manifest"
    assert other.read_text() == (build["out"] / "clst-64-dns-pm02.manifest").read_text()


@pytest.mark.parametrize("phase", ["copy the cluster image", "node files", "block map and checksum"])
def test_a_failure_in_a_node_phase_leaves_nothing(build, phase):
    loops, mnts = loop_devices(), mounts()
    out = build["dir"] / f"fail-{phase.split()[0]}"
    proc = run_pibuild("node", "dns-pm01", "-o", str(out), cwd=build["dir"],
                       env={"PIBUILD_TEST_FAIL_IN_PHASE": phase})
    assert proc.returncode == 1
    assert "failure injected" in proc.stderr and "Traceback" not in proc.stderr
    assert list(out.iterdir()) == [], "no output and no temporary file"
    assert loop_devices() <= loops and mounts() <= mnts


def test_ctrl_c_during_the_cold_build_leaves_no_mount_loop_or_cache_entry(build, tmp_path):
    """Interrupt mmdebstrap itself: its mounts, our temporary entry and the lock must all go."""
    shutil.copy(REPO / "tests/configs/arm64.yaml", tmp_path / "cluster.yaml")
    cfg = (tmp_path / "cluster.yaml").read_text().replace("user: admin", "user: interrupted")
    (tmp_path / "cluster.yaml").write_text(cfg)
    loops, mnts = loop_devices(), mounts()
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "node", "dns-pm01", "-o", "out"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:  # wait until packages are being installed: mounts exist inside the chroot now
        seen.append(line)
        if "installing" in line or time.monotonic() > deadline:
            break
    time.sleep(5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole process group
    rest = proc.communicate(timeout=300)[1]
    stderr = "".join(seen) + rest
    assert proc.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    root = cache.cache_root() / "cluster"
    assert not list(root.glob(".tmp-*")), "the temporary cache entry is removed"
    assert not [m for m in mounts() - mnts if str(cache.cache_root()) in m or "mmdebstrap" in m]
    assert loop_devices() <= loops
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    key = image_mod.cluster_key(config.load(tmp_path / "cluster.yaml"))
    assert cache.lookup("cluster", key) is None, "never a half-written cache entry"
    assert subprocess.run(["pgrep", "-f", key[:16]], capture_output=True).returncode == 1, "no build process left"


def test_file_base_runs_the_stages_on_a_local_image(build, tmp_path):
    """base.source: file — grow the root partition, run the stages in a chroot on the loop-mounted rootfs.

    The local image is one of the debian-base builds, so apt finds every package already installed and the test
    exercises the path raspios images take (download aside) without Raspberry Pi's servers.
    """
    cfg = (REPO / "tests/configs/arm64.yaml").read_text()
    cfg = cfg.replace("  source: debian\n", f"  source: file\n  path: {image(build, 'dns-pm02')}\n")
    cfg = cfg.replace("  updates: false\n", "")
    (tmp_path / "cluster.yaml").write_text(cfg)
    loops, mnts = loop_devices(), mounts()
    proc = run_pibuild("node", "dns-pm02", "-o", "out", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "grow the root partition" in proc.stderr and "stage 00-cluster-packages/00-packages" in proc.stderr
    img = tmp_path / "out/clst-64-dns-pm02.img"
    table = layout(img)
    assert table["partitions"][1]["size"] * 512 >= layout(image(build, "dns-pm02"))["partitions"][1]["size"] * 512 \
        + 1000 * 2**20, "the root partition grew"
    with rootfs(image(build, "dns-pm02")) as root:
        resolv_before = os.path.lexists(root / "etc/resolv.conf")
    with rootfs(img) as root:
        assert (root / "etc/hostname").read_text() == "dns-pm02\n"
        assert not (root / "usr/sbin/policy-rc.d").exists(), "the chroot's policy is removed"
        assert os.path.lexists(root / "etc/resolv.conf") == resolv_before, "the build host's resolver is not left"
    manifest = (tmp_path / "out/clst-64-dns-pm02.manifest").read_text()
    assert manifest == (build["out"] / "clst-64-dns-pm02.manifest").read_text()
    assert loop_devices() <= loops and mounts() <= mnts


def chroot_env(arch: str) -> dict[str, str]:
    """For the image's programs under qemu-user, as the build runs them (the CPU it emulates included)."""
    from builder import chroot
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", **chroot.user_env(arch)}


@contextlib.contextmanager
def pcs_sandbox(root: Path, arch: str = "arm64"):
    """The read-only image root with a scratch /tmp, /proc and /dev: enough for `pcs -f FILE` and the agents."""
    from builder import chroot, cib
    chroot.ensure_binfmt(arch)
    mounted = []
    # A scratch /tmp, and Pacemaker's schemas on a tmpfs as the build's CIB step has them (32-bit programs under
    # qemu-user cannot list a directory of the host's ext4).
    with cib._scratch(root):
        try:
            for argv, target in ((["mount", "-t", "proc", "proc"], "proc"), (["mount", "--bind", "/dev"], "dev")):
                subprocess.run([*argv, str(root / target)], check=True)
                mounted.append(root / target)
            yield root
        finally:
            for m in reversed(mounted):
                subprocess.run(["umount", str(m)], check=False)


def test_the_image_own_pcs_accepts_every_cib_command_of_the_plan(release_node):
    """Every `pcs -f` command of the plan, run by the image's own pcs on an empty CIB (under qemu-user): pcs syntax
    differs between versions, and a recording fake cannot know which. The configuration the build shipped for
    firstboot to push (/etc/pibuild/cib-configuration.xml) is exactly what these commands make."""
    img, arch, _ = release_node
    with rootfs(img) as root, pcs_sandbox(root, arch):
        plan = json.loads((root / "etc/pibuild/firstboot.json").read_text())
        shipped_path = root / "etc/pibuild/cib-configuration.xml"
        assert shipped_path.stat().st_mode & 0o777 == 0o644
        shipped = ET.fromstring(shipped_path.read_text())

        def inside(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=600,
                                  env=chroot_env(arch))

        empty = inside("cibadmin", "--empty")
        assert empty.returncode == 0, empty.stderr
        (root / "tmp/cib.xml").write_text(empty.stdout)
        for command in plan["commands"]["cib"]:
            proc = inside("pcs", "-f", "/tmp/cib.xml", *command)
            assert proc.returncode == 0, f"pcs {' '.join(command)}: {proc.stderr}"
        verify = inside("crm_verify", "--xml-file", "/tmp/cib.xml")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        cib = ET.fromstring((root / "tmp/cib.xml").read_text())
    for section in ("crm_config", "resources", "constraints", "rsc_defaults"):
        made, built = (c.find(f"configuration/{section}") for c in (cib, shipped))
        assert ET.tostring(built) == ET.tostring(made), section
    # pibuild's layout: one cloned named2 monitor; each address colocated with it, after it, and at its place.
    (clone,) = cib.iter("clone")
    assert clone.get("id") == "named-monitor-clone"
    assert [(p.get("id"), p.get("provider"), p.get("type")) for p in clone] == [("named-monitor", "pibuild", "named2")]
    vips = {p.get("id"): (p.get("provider"), p.get("type"))
            for p in cib.find("configuration/resources").findall("primitive")}
    assert vips == {"rs-vip-1": ("pibuild", "vip"), "rs-vip-2": ("pibuild", "vip")}
    colocations = {(c.get("rsc"), c.get("with-rsc"), c.get("score")) for c in cib.iter("rsc_colocation")}
    assert colocations == {(v, "named-monitor-clone", str(MONITOR_COLOCATION_SCORE)) for v in vips}
    orders = {(o.get("first"), o.get("then"), o.get("kind")) for o in cib.iter("rsc_order")}
    assert orders == {("named-monitor-clone", v, "Optional") for v in vips}
    locations = {c.get("rsc") for c in cib.iter("rsc_location")}
    assert locations == {"rs-vip-1", "rs-vip-2"}


def test_the_scheduler_moves_a_vip_to_an_answering_bind_and_keeps_it_on_the_last_node(release_node):
    """The image's own Pacemaker scheduler (crm_simulate) on the configuration the build shipped, step by step from
    both nodes up: a failed BIND monitor on a node sends its VIP to the node whose monitor runs; on the last node
    left it keeps both VIPs. (Colocated at INFINITY, one false miss there, BIND busy rescanning its interfaces as a
    VIP arrived, stopped both VIPs until the lost node came back: 287 s in a lab drill.)"""
    img, arch, _ = release_node
    with rootfs(img) as root, pcs_sandbox(root, arch):
        shutil.copyfile(root / "etc/pibuild/cib-configuration.xml", root / "tmp/0.xml")
        env = chroot_env(arch)
        steps = iter(range(1, 100))

        def after(state: int, *events: str) -> tuple[int, dict[str, tuple[str, ...]]]:
            """Simulate one transition from `state` with `events`; the new state and where each VIP runs."""
            new = next(steps)
            sim = subprocess.run(["chroot", str(root), "crm_simulate", "-x", f"/tmp/{state}.xml", "-S", *events,
                                  "-O", f"/tmp/{new}.xml"], capture_output=True, text=True, timeout=600, env=env)
            assert sim.returncode == 0, sim.stdout + sim.stderr
            mon = subprocess.run(["chroot", str(root), "crm_mon", "-1", "--output-as", "xml"], capture_output=True,
                                 text=True, timeout=600, env={**env, "CIB_file": f"/tmp/{new}.xml"})
            assert mon.returncode == 0, mon.stderr
            where = {r.get("id"): tuple(n.get("name") for n in r.iter("node"))
                     for r in ET.fromstring(mon.stdout).iter("resource") if r.get("id").startswith("rs-vip-")}
            return new, where

        both, where = after(0, "-u", "dns-pm01", "-u", "dns-pm02")
        assert where == {"rs-vip-1": ("dns-pm01",), "rs-vip-2": ("dns-pm02",)}
        _, where = after(both, "-i", "named-monitor_monitor_2000@dns-pm01=1")
        assert where == {"rs-vip-1": ("dns-pm02",), "rs-vip-2": ("dns-pm02",)}, "to the BIND that answers"
        alone, where = after(both, "-d", "dns-pm01")
        assert where == {"rs-vip-1": ("dns-pm02",), "rs-vip-2": ("dns-pm02",)}
        missed, where = after(alone, "-i", "named-monitor_monitor_2000@dns-pm02=1")
        assert where == {"rs-vip-1": ("dns-pm02",), "rs-vip-2": ("dns-pm02",)}, "the last node keeps its VIPs"
        _, where = after(missed, "-u", "dns-pm01")
        assert where == {"rs-vip-1": ("dns-pm01",), "rs-vip-2": ("dns-pm01",)}, "to the node whose BIND answers"


def test_the_image_programs_run_on_a_pi_3_cpu_without_pointer_authentication(build):
    """What the build runs under qemu-user (dpkg, pcs, crm_verify) runs as a Cortex-A53: qemu's default arm64 CPU
    authenticates pointers, which trixie's programs do at every return and TCG computes slowly (5x slower here).
    AT_HWCAP's PACA bit (1 << 30) says which CPU the program got."""
    script = ("import struct; a = open('/proc/self/auxv', 'rb').read(); "
              "print(dict(struct.iter_unpack('<QQ', a)).get(16, 0) >> 30 & 1)")
    with rootfs(image(build, "dns-pm01")) as root, pcs_sandbox(root):
        def paca(env: dict[str, str]) -> str:
            return subprocess.run(["chroot", str(root), "python3", "-S", "-c", script], capture_output=True,
                                  text=True, timeout=600, env=env, check=True).stdout.strip()
        assert paca(chroot_env("arm64")) == "0"
        assert paca({k: v for k, v in chroot_env("arm64").items() if k != "QEMU_CPU"}) == "1", "qemu's default"


def test_a_cib_command_pcs_refuses_fails_cleanly(build, tmp_path):
    """builder/cib.py on a node image: a command the image's pcs refuses is one PibuildError naming it, and the
    chroot's mounts (proc, sys, dev, the tmpfs /tmp and schema copy) are all gone afterwards."""
    from builder import cib, mounts
    from builder import image as image_mod
    from builder.errors import PibuildError
    copy = tmp_path / "node.img"
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(image(build, "dns-pm01")), str(copy)], check=True)
    layout = image_mod.read_layout(copy)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounts.partition_mounted(copy, layout.root_offset, layout.root_size, mnt) as root:
        with pytest.raises(PibuildError, match="resource create nope ocf:pibuild:no-such-agent") as failed:
            cib.build(root, "arm64", [["resource", "create", "nope", "ocf:pibuild:no-such-agent"]])
        assert "Traceback" not in str(failed.value)
        assert mounts.mounts_under(root) == [str(root)], "only the partition itself is still mounted"
        assert (root / "usr/share/pacemaker").is_dir() and any((root / "usr/share/pacemaker").iterdir())
