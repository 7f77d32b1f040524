"""`pibuild flash`: real writes to loop devices (root), refusals proven to happen before anything is written.

Loop devices are not removable, so the writing tests pass force=True. Every loop device a test attaches is detached in
the `loops` fixture, which also checks that none is left behind.
"""

import hashlib
import lzma
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder import flash as flashmod
from builder import progress, tools
from builder.cli import cli
from builder.errors import PibuildError, UsageError
from builder.flash import flash

MiB = 1 << 20
IMAGE_SIZE = 64 * MiB
BLOCK = 4096
# (4 KiB block, count) of random data written into the image, besides the partition table and filesystems
DATA = [(300, 10), (5000, 50), (16000, 8)]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("bmaptool", "losetup", "sfdisk", "lsblk", "xz")),
                       reason="needs bmap-tools, util-linux, fdisk and xz-utils"),
]


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


def sha256_file(path, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = size if size is not None else float("inf")
        while left > 0 and (chunk := f.read(int(min(MiB, left)))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def make_image(directory: Path, name: str = "node.img", *, bmap: bool = True, sha: bool = True) -> Path:
    """A 64 MiB sparse image: two partitions (an 8 MiB one, an ext4 one), a little random data in places."""
    img = directory / name
    with open(img, "wb") as f:
        f.truncate(IMAGE_SIZE)
    sh("sfdisk", "-q", str(img), input="label: dos\nstart=2048, size=16384, type=c\nstart=18432, type=83\n")
    if shutil.which("mke2fs"):
        sh("mke2fs", "-q", "-t", "ext4", "-E", f"offset={18432 * 512}", str(img), "55M")
    rnd = os.urandom(64 * BLOCK)
    with open(img, "r+b") as f:
        for block, count in DATA:
            f.seek(block * BLOCK)
            f.write(rnd[: count * BLOCK])
    if bmap:
        sh("bmaptool", "--quiet", "create", "-o", f"{img}.bmap", str(img))
    if sha:
        Path(f"{img}.sha256").write_text(f"{sha256_file(img)}  {img.name}\n")
    return img


def _stat_sectors_written(dev: str) -> int:
    return int(Path(f"/sys/block/{os.path.basename(dev)}/stat").read_text().split()[6])


_ATTACHED_AT: dict[str, int] = {}  # a loop device's counters outlive its detaching: count from the attach


def sectors_written(dev: str) -> int:
    """Sectors the kernel wrote to the loop device since the test attached it."""
    return _stat_sectors_written(dev) - _ATTACHED_AT[dev]


@pytest.fixture
def loops():
    """attach(file, size=None, ro=False) -> /dev/loopN; every device detached afterwards, and checked gone."""
    attached: list[tuple[str, Path]] = []

    def attach(backing: Path, size: int | None = None, ro: bool = False, partscan: bool = False) -> str:
        if size is not None:
            with open(backing, "wb") as f:
                f.truncate(size)
        options = (["-r"] if ro else []) + (["-P"] if partscan else [])
        dev = sh("losetup", "-f", "--show", *options, str(backing)).stdout.strip()
        attached.append((dev, backing))
        _ATTACHED_AT[dev] = _stat_sectors_written(dev)
        return dev

    try:
        yield attach
    finally:
        for dev, _ in attached:
            subprocess.run(["losetup", "-d", dev], check=False)
        for _, backing in attached:
            assert sh("losetup", "-j", str(backing)).stdout.strip() == "", f"loop device left on {backing}"


@pytest.fixture
def image(tmp_path) -> Path:
    return make_image(tmp_path)


@pytest.fixture
def said():
    """What flash() says, line by line (builder.progress)."""
    lines: list[str] = []
    with progress.using(progress.Reporter(lines.append)):
        yield lines


def no_confirm(prompt: str) -> bool:
    raise AssertionError(f"asked for confirmation: {prompt}")


# ------------------------------------------------------------------------------------------------------ writing

def test_flash_produces_an_exact_copy_writing_only_mapped_blocks(image, tmp_path, loops):
    dev = loops(tmp_path / "card.bin", size=80 * MiB)
    report = flash(image, dev, yes=True, force=True, confirm=no_confirm)
    assert sha256_file(dev, IMAGE_SIZE) == sha256_file(image)
    assert report.method == "bmap" and report.sha256 == "checked"
    assert report.mapped_bytes < IMAGE_SIZE // 4
    assert report.verified_bytes == report.mapped_bytes
    assert report.mapped_bytes <= report.bytes_written <= 1.05 * report.mapped_bytes
    with open(dev, "rb") as f:  # the rest of the card is untouched
        f.seek(IMAGE_SIZE)
        assert f.read() == bytes(16 * MiB)


def test_flash_xz_with_bmap_and_checksum_of_the_xz(image, tmp_path, loops):
    xz = tmp_path / "node.img.xz"
    xz.write_bytes(lzma.compress(image.read_bytes(), preset=1))
    Path(f"{xz}.sha256").write_text(f"{sha256_file(xz)}  {xz.name}\n")
    os.unlink(f"{image}.sha256")
    os.unlink(image)  # only node.img.xz and node.img.bmap remain
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    report = flash(xz, dev, yes=True, force=True, confirm=no_confirm)
    assert report.method == "bmap" and report.sha256 == "checked"
    assert sha256_file(dev) == hashlib.sha256(lzma.decompress(xz.read_bytes())).hexdigest()


def test_flash_xz_without_bmap_falls_back_to_a_full_copy_and_says_so(image, tmp_path, loops, said):
    xz = tmp_path / "node.img.xz"
    xz.write_bytes(lzma.compress(image.read_bytes(), preset=1))
    os.unlink(f"{image}.bmap")
    os.unlink(image)  # node.img.sha256 (of the decompressed image) stays: checked by decompressing
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    report = flash(xz, dev, yes=True, force=True, confirm=no_confirm)
    assert report.method == "full copy" and report.sha256 == "checked"
    assert report.verified_bytes == IMAGE_SIZE
    assert any("no block map" in s and "every byte" in s for s in said)
    assert sha256_file(dev) == hashlib.sha256(lzma.decompress(xz.read_bytes())).hexdigest()


def test_flash_img_without_bmap_creates_one_and_says_so(tmp_path, loops, said):
    img = make_image(tmp_path, bmap=False, sha=False)
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    report = flash(img, dev, yes=True, force=True, confirm=no_confirm)
    assert report.method == "bmap (created)" and report.sha256 == "missing"
    assert report.mapped_bytes < IMAGE_SIZE // 4
    assert any("creating one" in s for s in said) and any("not checked" in s for s in said)
    assert not Path(f"{img}.bmap").exists()
    assert sha256_file(dev) == sha256_file(img)


def test_regular_file_target_needs_force(image, tmp_path):
    out = tmp_path / "copy.img"
    out.write_bytes(b"x")
    with pytest.raises(PibuildError, match=r"refusing .*copy.img: it is a regular file.*--force"):
        flash(image, str(out), yes=True, force=False, confirm=no_confirm)
    assert out.read_bytes() == b"x"
    flash(image, str(out), yes=True, force=True, confirm=no_confirm)
    assert sha256_file(out) == sha256_file(image)
    with pytest.raises(PibuildError, match="the image itself"):
        flash(image, str(image), yes=True, force=True, confirm=no_confirm)
    new = tmp_path / "new.img"
    with pytest.raises(UsageError, match="new.img does not exist"):
        flash(image, str(new), yes=True, force=False, confirm=no_confirm)
    flash(image, str(new), yes=True, force=True, confirm=no_confirm)
    assert sha256_file(new) == sha256_file(image)


def test_confirmation_shows_the_target_and_declining_writes_nothing(image, tmp_path, loops, said):
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    prompts: list[str] = []
    with pytest.raises(PibuildError, match="not confirmed: nothing written"):
        flash(image, dev, yes=False, force=True, confirm=lambda p: prompts.append(p) or False)
    assert prompts == [f"Erase {dev} and write node.img to it?"]
    assert any(s.startswith(f"target: {dev}, ") and "67.1 MB" in s and "not removable" in s for s in said)
    assert sectors_written(dev) == 0


# ------------------------------------------------------------------------------------------------- verification

@pytest.mark.parametrize("where", ["device", "backing-file"])
def test_change_between_write_and_verify_is_caught(image, tmp_path, loops, where):
    """The hook flips one byte in a mapped block after the write. Through the backing file the loop device's page
    cache still holds the written data: only a read-back from the device itself sees the change."""
    backing = tmp_path / "card.bin"
    dev = loops(backing, size=IMAGE_SIZE)
    offset = DATA[1][0] * BLOCK + 17

    def corrupt(path: str) -> None:
        assert path == dev
        fd = os.open(dev if where == "device" else backing, os.O_RDWR)
        try:
            byte = os.pread(fd, 1, offset)
            os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    with pytest.raises(PibuildError, match=rf"verification failed: {dev} differs from node.img in bytes "
                                           rf"{DATA[1][0] * BLOCK}-"):
        flash(image, dev, yes=True, force=True, confirm=no_confirm, after_write=corrupt)


def test_image_not_matching_its_bmap_fails_cleanly(image, tmp_path, loops):
    """bmaptool checks the image's data against the bmap's checksums as it writes."""
    with open(image, "r+b") as f:
        f.seek(DATA[0][0] * BLOCK + 5)
        f.write(b"changed")
    Path(f"{image}.sha256").write_text(f"{sha256_file(image)}  node.img\n")
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    with pytest.raises(PibuildError, match=rf"^writing {dev} failed: bmaptool: checksum mismatch for blocks "
                                           r"range 300-309: .*partly written"):
        flash(image, dev, yes=True, force=True, confirm=no_confirm)


def test_checksum_mismatch_refused_before_writing(image, tmp_path, loops):
    Path(f"{image}.sha256").write_text(f"{'0' * 64}  node.img\n")
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    with pytest.raises(PibuildError, match="sha256 .* does not match"):
        flash(image, dev, yes=True, force=True, confirm=no_confirm)
    assert sectors_written(dev) == 0


# ------------------------------------------------------------------------------------------------------ refusals

def root_disk() -> str | None:
    """The whole disk holding /, found independently of builder.flash (findmnt + lsblk)."""
    proc = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], check=False, capture_output=True, text=True)
    source = proc.stdout.strip()
    if proc.returncode != 0 or not source.startswith("/dev/"):
        return None
    out = subprocess.run(["lsblk", "-n", "-s", "-p", "-o", "PATH,TYPE", source],
                         check=False, capture_output=True, text=True)
    disks = [line.split()[0] for line in out.stdout.splitlines() if line.split()[-1] == "disk"]
    return disks[0] if disks else None


def read_first_kib(disk: str) -> bytes | None:
    try:
        with open(disk, "rb") as f:
            return f.read(1024)
    except PermissionError:  # a sandbox may deny even reading it
        return None


@pytest.mark.parametrize("force", [False, True])
def test_system_disk_refused_and_untouched(image, monkeypatch, force):
    disk = root_disk()
    if disk is None:
        pytest.skip("/ is not on a block device here")
    # Belt and braces: should the refusal ever regress, nothing can reach the disk from this test.
    real_run = tools.run

    def guarded_run(argv, **kw):
        assert os.path.basename(str(argv[0])) not in ("bmaptool", "umount", "dd"), f"tried to run {argv}"
        return real_run(argv, **kw)

    def must_not_be_called(*args, **kw):
        raise AssertionError("reached a writing stage")

    monkeypatch.setattr(tools, "run", guarded_run)
    for stage in ("_unmount", "_claim", "_write", "_sync_and_drop_cache", "check_sha256"):
        monkeypatch.setattr(flashmod, stage, must_not_be_called)
    first_kib = read_first_kib(disk)

    with pytest.raises(PibuildError, match=rf"^refusing {disk}: it holds /[ ,].*\(the running system\)"):
        flash(image, disk, yes=True, force=force, confirm=no_confirm)
    # the refusal comes from identifying the target, before any other stage
    with pytest.raises(PibuildError, match=rf"^refusing {disk}: it holds /"):
        flashmod.identify_target(disk, 0, force=True)
    assert read_first_kib(disk) == first_kib


def test_too_small_target_refused(image, tmp_path, loops):
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE - MiB)
    with pytest.raises(PibuildError, match=rf"^refusing {dev}: it holds 66.1 MB .* the image needs 67.1 MB"):
        flash(image, dev, yes=True, force=True, confirm=no_confirm)
    assert sectors_written(dev) == 0


def test_non_removable_refused_without_force(image, tmp_path, loops):
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    with pytest.raises(PibuildError, match=rf"^refusing {dev}: it is not a removable device.*--force"):
        flash(image, dev, yes=True, force=False, confirm=no_confirm)
    assert sectors_written(dev) == 0


def test_read_only_refused(image, tmp_path, loops):
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE, ro=True)
    with pytest.raises(PibuildError, match=rf"^refusing {dev}: it is read-only"):
        flash(image, dev, yes=True, force=True, confirm=no_confirm)


@pytest.fixture
def card_with_partitions(tmp_path, loops):
    """A loop device holding a flashed image, with its partitions /dev/loopNp1 and p2."""
    backing = tmp_path / "card.bin"
    shutil.copyfile(make_image(tmp_path, "old.img", bmap=False, sha=False), backing)
    dev = loops(backing, partscan=True)
    for _ in range(40):
        if os.path.exists(f"{dev}p2"):
            return dev
        time.sleep(0.05)
    subprocess.run(["partx", "-a", dev], check=False, capture_output=True)
    if not os.path.exists(f"{dev}p2"):
        pytest.skip("partitions of a loop device do not appear here")
    return dev


def test_partition_refused(image, card_with_partitions):
    dev = card_with_partitions
    with pytest.raises(PibuildError, match=rf"^refusing {dev}p1: it is a partition; give the whole disk \({dev}\)"):
        flash(image, f"{dev}p1", yes=True, force=True, confirm=no_confirm)


def test_automounted_partition_unmounted_then_written(image, card_with_partitions, said):
    dev = card_with_partitions
    mountpoint = Path(f"/media/pibuild-test-{os.getpid()}")
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        sh("mount", f"{dev}p2", str(mountpoint))
        report = flash(image, dev, yes=True, force=True, confirm=no_confirm)
        assert report.unmounted == [str(mountpoint)]
        assert any(f"{dev}p2 is mounted at {mountpoint} (will be unmounted)" in s for s in said)
        assert not os.path.ismount(mountpoint)
        assert sha256_file(dev, IMAGE_SIZE) == sha256_file(image)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)
        mountpoint.rmdir()


def test_partition_mounted_elsewhere_refused(image, tmp_path, card_with_partitions):
    dev = card_with_partitions
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        sh("mount", f"{dev}p2", str(mountpoint))
        with pytest.raises(PibuildError, match=rf"^refusing {dev}: {dev}p2 is mounted at {mountpoint}; unmount"):
            flash(image, dev, yes=True, force=True, confirm=no_confirm)
        assert os.path.ismount(mountpoint)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)


def test_active_swap_refused(image, card_with_partitions):
    dev = card_with_partitions
    sh("mkswap", f"{dev}p1")
    if subprocess.run(["swapon", f"{dev}p1"], check=False, capture_output=True).returncode != 0:
        pytest.skip("swapon is not permitted here")
    try:
        with pytest.raises(PibuildError, match=rf"^refusing {dev}: it holds swap \(the running system\)"):
            flash(image, dev, yes=True, force=True, confirm=no_confirm)
    finally:
        subprocess.run(["swapoff", f"{dev}p1"], check=True)


def test_device_claimed_by_another_program_refused(image, tmp_path, loops):
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    fd = os.open(dev, os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(PibuildError, match=rf"^refusing {dev}: it is in use"):
            flash(image, dev, yes=True, force=True, confirm=no_confirm)
    finally:
        os.close(fd)
    assert sectors_written(dev) == 0


def test_bad_arguments(image, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        flash(tmp_path / "nope.img", str(tmp_path / "out.img"), yes=True, force=True, confirm=no_confirm)
    other = tmp_path / "node.iso"
    other.write_bytes(b"")
    with pytest.raises(UsageError, match=r"expected a \.img or \.img\.xz"):
        flash(other, str(tmp_path / "out.img"), yes=True, force=True, confirm=no_confirm)
    with pytest.raises(UsageError, match="/dev/pibuild-no-such-disk does not exist"):
        flash(image, "/dev/pibuild-no-such-disk", yes=True, force=True, confirm=no_confirm)


def test_disks_under_device_mapper_found_through_sysfs(tmp_path, monkeypatch):
    """No device-mapper here: a fake sysfs with dm-0 on vda2 shows that / on LVM still names vda, and holders."""
    sysfs = tmp_path / "sys"
    vda = sysfs / "devices/virtual/block/vda"
    dm = sysfs / "devices/virtual/block/dm-0"
    (vda / "vda2" / "holders").mkdir(parents=True)
    (vda / "holders").mkdir()
    (vda / "vda2" / "partition").write_text("2\n")
    (vda / "vda2" / "dev").write_text("254:2\n")
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves" / "vda2").symlink_to(vda / "vda2")
    (vda / "vda2" / "holders" / "dm-0").symlink_to(dm)
    (sysfs / "dev/block").mkdir(parents=True)
    (sysfs / "dev/block/253:0").symlink_to(dm)
    (sysfs / "dev/block/254:2").symlink_to(vda / "vda2")
    (sysfs / "block").mkdir()
    (sysfs / "block/vda").symlink_to(vda)
    monkeypatch.setattr(flashmod, "SYSFS", sysfs)
    assert flashmod.disks_of("253:0") == {"vda"}
    assert flashmod.disks_of("254:2") == {"vda"}
    assert flashmod.holders("vda") == ["dm-0"]


# ----------------------------------------------------------------------------------------------------- the command

def test_cli_flash(image, tmp_path, loops):
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    runner = CliRunner()
    refused = runner.invoke(cli, ["flash", str(image), dev, "--yes"])
    assert refused.exit_code == 1, refused.output
    assert f"error: refusing {dev}: it is not a removable device" in refused.output
    missing = runner.invoke(cli, ["flash", str(tmp_path / "nope.img"), dev, "--yes"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    no_terminal = runner.invoke(cli, ["flash", str(image), dev, "--force"])
    assert no_terminal.exit_code == 2 and "pass --yes" in no_terminal.output
    assert sectors_written(dev) == 0
    done = runner.invoke(cli, ["flash", str(image), dev, "--yes", "--force"])
    assert done.exit_code == 0, done.output
    assert f"flashed node.img to {dev}:" in done.output and "sha256 checked" in done.output
    assert sha256_file(dev) == sha256_file(image)
