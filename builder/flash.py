"""`pibuild flash IMAGE DEVICE`: write an image to an SD card safely, only the blocks the image uses, and verify it.

Every check runs before anything is written, and each refusal is one line naming the device, the reason and the fix:

1. the image: `.img` or `.img.xz`; the `.sha256` beside it checked; its block map (`.bmap`) found, else made
   (plain `.img`) or replaced by a full copy (`.img.xz`);
2. the target, identified from `lsblk --json` and sysfs: refused, even with --force, when it (or anything stacked on it,
   dm/md) holds a filesystem or swap the running system uses, when it is a partition, read-only, too small, held by
   device-mapper/md, or has a filesystem mounted outside the auto-mount places (/media, /run/media, /mnt); refused
   without --force when it is neither removable nor on a USB/SD bus, or is a regular file;
3. confirmation, showing model, size, transport and mounted partitions, unless --yes.

Then: unmount the card's auto-mounted partitions, claim it exclusively (O_EXCL: fails while anything has it mounted or
claimed) as a last check, `bmaptool copy` (which itself opens the device O_EXCL and checks the bmap's checksums of the
image data as it writes), sync, and read the mapped ranges back from the device past the page cache, comparing them
with the bmap's checksums (or with the image itself where there are none).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import lzma
import os
import re
import stat
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from builder import progress, tools
from builder.errors import NeedsRoot, PibuildError, UsageError

SYSFS = Path("/sys")
PROC = Path("/proc")

# A disk with a filesystem mounted here (or below, except for "/") is the running system's.
SYSTEM_PATHS = ("/", "/boot", "/efi", "/usr", "/var", "/etc", "/home", "/opt", "/srv", "/root", "/nix", "/snap")
# Where desktops and people mount a card; such mounts are unmounted before writing.
AUTOMOUNT_DIRS = ("/media", "/run/media", "/mnt")
WHOLE_DISK_TYPES = ("disk", "loop")
LSBLK_COLUMNS = "NAME,PATH,TYPE,SIZE,RO,RM,MODEL,TRAN,MOUNTPOINTS,FSTYPE,PKNAME,MAJ:MIN"
BLKFLSBUF = 0x1261  # ioctl: write back and drop a block device's buffer cache
CHUNK = 4 << 20


def _refuse(device: str, reason: str) -> PibuildError:
    return PibuildError(f"refusing {device}: {reason}")


def human(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------------------- the image

@dataclass
class Bmap:
    path: Path
    image_size: int
    block_size: int
    checksum_type: str | None
    ranges: list[tuple[int, int, str | None]]  # [start, end) in bytes, hex digest of those bytes or None

    @property
    def mapped_bytes(self) -> int:
        return sum(end - start for start, end, _ in self.ranges)


def parse_bmap(path: Path) -> Bmap:
    try:
        root = ET.parse(path).getroot()
        image_size = int(root.findtext("ImageSize").strip())
        block_size = int(root.findtext("BlockSize").strip())
        ctype = (root.findtext("ChecksumType") or "").strip() or None
        ranges = []
        for rng in root.iter("Range"):
            first, _, last = rng.text.strip().partition("-")
            start = int(first) * block_size
            end = min((int(last or first) + 1) * block_size, image_size)
            digest = rng.get("chksum") or rng.get("sha1")  # bmap 2.x / 1.x
            ranges.append((start, end, digest))
    except (ET.ParseError, AttributeError, ValueError, OSError) as exc:
        raise PibuildError(f"{path}: not a readable bmap file ({exc}): recreate it with `bmaptool create`") from exc
    if ctype is None and any(d for _, _, d in ranges):
        ctype = "sha1"
    if ctype is not None and ctype not in hashlib.algorithms_available:
        raise PibuildError(f"{path}: unknown checksum type {ctype!r}")
    return Bmap(path, image_size, block_size, ctype, ranges)


@dataclass
class Image:
    path: Path
    compressed: bool
    size: int  # uncompressed bytes

    @property
    def plain_name(self) -> Path:  # foo.img for foo.img and foo.img.xz
        return self.path.with_suffix("") if self.compressed else self.path

    def open(self):
        return lzma.open(self.path, "rb") if self.compressed else open(self.path, "rb")


def open_image(path: Path) -> Image:
    if not path.is_file():
        raise UsageError(f"image {path} does not exist (or is not a file)")
    name = path.name
    if name.endswith(".img"):
        return Image(path, False, path.stat().st_size)
    if name.endswith(".img.xz"):
        tools.require("xz")
        out = tools.run(["xz", "--robot", "--list", str(path)], capture=True).stdout.decode()
        for line in out.splitlines():
            fields = line.split("\t")
            if fields[0] == "totals":
                return Image(path, True, int(fields[4]))
        raise PibuildError(f"{path}: xz did not report the uncompressed size: is it a complete .xz file?")
    raise UsageError(f"image {path}: expected a .img or .img.xz file")


def _expected_sha256(sumfile: Path, name: str) -> str:
    lines = [ln.split() for ln in sumfile.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) == 1 and len(lines[0]) == 1:
        return lines[0][0].lower()
    for parts in lines:
        if len(parts) >= 2 and parts[1].lstrip("*").rsplit("/", 1)[-1] == name:
            return parts[0].lower()
    if len(lines) == 1:
        return lines[0][0].lower()
    raise PibuildError(f"{sumfile}: no checksum line for {name}")


def check_sha256(image: Image) -> str:
    """Check the image against the .sha256 beside it: 'checked', or 'missing' (said); a mismatch raises."""
    candidates = [(Path(f"{image.path}.sha256"), False)]
    if image.compressed:  # foo.img.sha256 beside foo.img.xz: the checksum of the decompressed image
        candidates.append((Path(f"{image.plain_name}.sha256"), True))
    for sumfile, decompressed in candidates:
        if not sumfile.is_file():
            continue
        name = image.plain_name.name if decompressed else image.path.name
        expected = _expected_sha256(sumfile, name)
        if decompressed:
            progress.say(f"checking {image.path.name} against {sumfile.name} (decompressing)")
            with image.open() as stream:
                actual = tools.sha256_of(stream, CHUNK)
        else:
            with open(image.path, "rb") as stream:
                actual = tools.sha256_of(stream, CHUNK)
        if actual != expected:
            raise PibuildError(f"{image.path}: sha256 {actual} does not match {sumfile} ({expected}): "
                               "the image is damaged or not the one listed; download or build it again")
        return "checked"
    progress.say(f"note: no {candidates[0][0].name} beside the image: its checksum is not checked")
    return "missing"


def find_bmap(image: Image) -> Path | None:
    names = [f"{image.path}.bmap", f"{image.plain_name}.bmap", str(image.plain_name.with_suffix(".bmap"))]
    return next((Path(n) for n in dict.fromkeys(names) if Path(n).is_file()), None)


# --------------------------------------------------------------------------------------------------------- the target

@dataclass
class Target:
    path: str  # the device node (or regular file), symlinks resolved
    given: str  # as the user typed it
    is_file: bool
    size: int
    name: str = ""  # kernel name (sdb, mmcblk0, loop3)
    devno: str = ""  # "maj:min"
    model: str | None = None
    transport: str | None = None
    removable: bool = False
    automounts: list[tuple[str, str]] = field(default_factory=list)  # (device, mountpoint) to unmount

    def describe(self) -> str:
        if self.is_file:
            return f"{self.path}: regular file"
        parts = [self.path, self.model or "unknown model", human(self.size), self.transport or "no transport",
                 "removable" if self.removable else "not removable"]
        text = ", ".join(parts)
        for dev, mountpoint in self.automounts:
            text += f"\n  {dev} is mounted at {mountpoint} (will be unmounted)"
        return text


def _devno(st_rdev: int) -> str:
    return f"{os.major(st_rdev)}:{os.minor(st_rdev)}"


def _sysfs_node(devno: str) -> Path | None:
    node = SYSFS / "dev" / "block" / devno
    return node.resolve() if node.exists() else None


def disks_of(devno: str, _depth: int = 0) -> set[str]:
    """The whole disks under block device maj:min: a partition's disk, the disks under a dm/md device, recursively."""
    node = _sysfs_node(devno)
    if node is None or _depth > 8:
        return set()
    if (node / "partition").exists():
        node = node.parent
    slaves = sorted((node / "slaves").iterdir()) if (node / "slaves").is_dir() else []
    if not slaves:
        return {node.name}
    disks: set[str] = set()
    for slave in slaves:
        dev_file = slave.resolve() / "dev"
        if dev_file.is_file():
            disks |= disks_of(dev_file.read_text().strip(), _depth + 1)
    return disks


def _unescape(path: str) -> str:  # mountinfo and /proc/swaps escape space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts() -> list[tuple[str, str, str]]:
    """(maj:min, source, mountpoint) of every mounted filesystem, from /proc/self/mountinfo."""
    out = []
    for line in (PROC / "self" / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 2:
            out.append((fields[2], _unescape(rfields[1]), _unescape(fields[4])))
    return out


def _disks_of_source(devno: str, source: str) -> set[str]:
    disks = disks_of(devno)
    if source.startswith("/dev/"):
        try:
            st = os.stat(source)
        except OSError:
            return disks
        if stat.S_ISBLK(st.st_mode):
            disks |= disks_of(_devno(st.st_rdev))
    return disks


def is_system_path(mountpoint: str) -> bool:
    return mountpoint == "/" or any(mountpoint == p or mountpoint.startswith(p + "/") for p in SYSTEM_PATHS[1:])


def is_automount_path(mountpoint: str) -> bool:
    return any(mountpoint.startswith(p + "/") for p in AUTOMOUNT_DIRS)


def system_disks() -> dict[str, list[str]]:
    """disk name -> what of the running system it holds ("/", "/boot", "swap", ...)."""
    held: dict[str, list[str]] = {}
    for devno, source, mountpoint in mounts():
        if is_system_path(mountpoint):
            for disk in _disks_of_source(devno, source):
                held.setdefault(disk, []).append(mountpoint)
    try:
        swaps = (PROC / "swaps").read_text().splitlines()[1:]
    except OSError:
        swaps = []
    for line in swaps:
        parts = line.split()
        if not parts:
            continue
        try:
            st = os.stat(_unescape(parts[0]))
        except OSError:
            continue
        devno = _devno(st.st_rdev) if stat.S_ISBLK(st.st_mode) else _devno(st.st_dev)  # a swap file: its filesystem
        for disk in disks_of(devno):
            held.setdefault(disk, []).append("swap")
    return held


def holders(name: str) -> list[str]:
    """Devices (dm, md) stacked on the disk or on one of its partitions."""
    base = SYSFS / "block" / name
    if not base.is_dir():
        return []
    dirs = [base] + [p for p in sorted(base.iterdir()) if (p / "partition").exists()]
    return [h.name for d in dirs if (d / "holders").is_dir() for h in sorted((d / "holders").iterdir())]


def _lsblk(path: str) -> dict:
    import json

    out = tools.run(["lsblk", "--json", "--bytes", "-o", LSBLK_COLUMNS, path], capture=True).stdout
    try:
        devices = json.loads(out)["blockdevices"]
        return devices[0]
    except (ValueError, KeyError, IndexError) as exc:
        raise PibuildError(f"lsblk gave no usable description of {path}") from exc


def _flatten(dev: dict) -> Iterable[dict]:
    yield dev
    for child in dev.get("children") or []:
        yield from _flatten(child)


def _flag(value) -> bool:
    return value in (True, 1, "1", "true")


def identify_target(device: str, image_size: int, *, force: bool, image_path: Path | None = None) -> Target:
    """Find out what DEVICE is and refuse, before anything is opened for writing, whatever must not be written."""
    path = os.path.realpath(device)
    if not os.path.exists(path):
        if force and not path.startswith("/dev/") and os.path.isdir(os.path.dirname(path)):
            return Target(path, device, True, 0)
        raise UsageError(f"{device} does not exist: give the card's whole-disk device (see `lsblk`)")
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        if image_path is not None and os.path.samefile(path, image_path):
            raise _refuse(device, "it is the image itself")
        if not force:
            raise _refuse(device, "it is a regular file, not a device; pass --force to write the image into it")
        return Target(path, device, True, st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{device} is neither a block device nor a regular file")

    devno = _devno(st.st_rdev)
    node = _sysfs_node(devno)
    info = _lsblk(path)
    kind = info.get("type")
    name = node.name if node is not None else info.get("name", "")
    if kind == "part" or (node is not None and (node / "partition").exists()):
        parent = node.parent.name if node is not None and (node / "partition").exists() else info.get("pkname")
        raise _refuse(device, f"it is a partition; give the whole disk (/dev/{parent}) to write an image")
    if kind not in WHOLE_DISK_TYPES:
        raise _refuse(device, f"it is a {kind} device, not a whole disk; give the card's disk (see `lsblk`)")

    system = system_disks()
    tree = list(_flatten(info))
    for dev in tree:  # lsblk's view too: anything under the target mounted at a system place or as swap
        for mountpoint in dev.get("mountpoints") or []:
            if mountpoint == "[SWAP]":
                system.setdefault(name, []).append("swap")
            elif mountpoint and is_system_path(mountpoint):
                system.setdefault(name, []).append(mountpoint)
    if name in system:
        what = ", ".join(dict.fromkeys(system[name]))
        raise _refuse(device, f"it holds {what} (the running system); pick the SD card's device (see `lsblk`)")
    if image_path is not None:
        image_dev = os.stat(image_path).st_dev
        if name in disks_of(_devno(image_dev)):
            raise _refuse(device, f"the image {image_path} lives on it; copy the image elsewhere first")
    stacked = holders(name) + [d["name"] for d in tree if d.get("type") not in ("disk", "loop", "part")]
    if stacked:
        raise _refuse(device, f"it is in use by {', '.join(dict.fromkeys(stacked))} (device-mapper/RAID); "
                              "stop that first")

    mounted: dict[str, str] = {}  # mountpoint -> device
    for devno_m, source, mountpoint in mounts():
        if name in _disks_of_source(devno_m, source):
            mounted[mountpoint] = source
    for dev in tree:
        for mountpoint in dev.get("mountpoints") or []:
            if mountpoint:
                mounted.setdefault(mountpoint, dev.get("path") or dev.get("name"))
    for mountpoint, source in mounted.items():
        if not is_automount_path(mountpoint):
            raise _refuse(device, f"{source} is mounted at {mountpoint}; unmount it first if this really is the card")

    size = int(info.get("size") or 0)
    if _flag(info.get("ro")) or (node is not None and (node / "ro").read_text().strip() == "1"):
        raise _refuse(device, "it is read-only (is the card's lock switch on?)")
    if size == 0:
        raise _refuse(device, "it has no medium (size 0); insert the card")
    if size < image_size:
        raise _refuse(device, f"it holds {human(size)} ({size} bytes) but the image needs {human(image_size)} "
                              f"({image_size} bytes); use a bigger card")
    removable = _flag(info.get("rm")) or (node is not None and (node / "removable").read_text().strip() == "1")
    transport = info.get("tran")
    card_like = removable or transport in ("usb", "mmc") or name.startswith("mmcblk")
    if not card_like and not force:
        raise _refuse(device, "it is not a removable device (an internal disk?); pass --force if you are sure "
                              "it is the card")
    automounts = sorted(((src, mp) for mp, src in mounted.items()), key=lambda m: -len(m[1]))
    return Target(path, device, False, size, name, devno, (info.get("model") or "").strip() or None,
                  transport, removable, automounts)


# ------------------------------------------------------------------------------------------ writing and verification

@dataclass
class FlashReport:
    image: Path
    device: str
    image_size: int
    mapped_bytes: int  # bytes the block map says the image uses; the image size for a full copy
    method: str  # "bmap", "bmap (created)" or "full copy"
    sha256: str  # "checked" or "missing"
    unmounted: list[str]
    bytes_written: int | None  # counted by the kernel for the device (/sys/dev/block/M:m/stat); None for a file
    verified_bytes: int
    write_seconds: float
    verify_seconds: float


def sectors_written(devno: str) -> int | None:
    """Sectors (512 bytes) the kernel has written to the device since it appeared (field 7 of its stat)."""
    try:
        return int((SYSFS / "dev" / "block" / devno / "stat").read_text().split()[6])
    except (OSError, IndexError, ValueError):
        return None


def _unmount(target: Target) -> list[str]:
    done = []
    for source, mountpoint in target.automounts:
        progress.say(f"unmounting {source} from {mountpoint}")
        proc = tools.run(["umount", mountpoint], capture=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise PibuildError(f"could not unmount {mountpoint} ({err[0]}): close what uses it and try again; "
                               "nothing written")
        done.append(mountpoint)
    return done


def _claim(target: Target) -> None:
    """Last check before writing: nothing has the device mounted or claimed (the kernel refuses O_EXCL then)."""
    if target.is_file:
        return
    try:
        fd = os.open(target.path, os.O_RDONLY | os.O_EXCL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise _refuse(target.given, "it is in use (mounted or claimed by another program); nothing written") \
                from exc
        raise PibuildError(f"cannot open {target.given}: {exc.strerror}") from exc
    os.close(fd)


def _write(image: Image, bmap: Bmap | None, target: Target) -> None:
    argv = ["bmaptool"]
    interactive = sys.stderr.isatty()
    if not interactive:
        argv.append("--quiet")
    argv.append("copy")
    argv += ["--bmap", str(bmap.path)] if bmap else ["--nobmap"]
    argv += [str(image.path), target.path]
    proc = tools.run(argv, capture=not interactive, check=False)
    if proc.returncode != 0:
        errors = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in (proc.stderr or b"").decode(errors="replace")
                  .splitlines() if "ERROR" in line and "traceback" not in line]
        reason = errors[-1].split("ERROR", 1)[1].lstrip(": ") if errors else f"exit {proc.returncode}, see above"
        raise PibuildError(f"writing {target.given} failed: bmaptool: {reason}; the card is partly written: "
                           "fix the cause and flash it again")


def _sync_and_drop_cache(target: Target) -> None:
    """Write everything back and drop the device's cached pages, so that what is read next comes from the device."""
    fd = os.open(target.path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if not target.is_file:
            try:
                fcntl.ioctl(fd, BLKFLSBUF, 0)
            except OSError:
                pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _range_digest(fd: int, start: int, end: int, algo: str, read: Callable[[int], None] = lambda n: None) -> str:
    """The digest of bytes start..end of fd; `read(n)` is told of every n bytes read (progress)."""
    digest = hashlib.new(algo)
    offset = start
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            break  # short device: the digest will differ
        digest.update(chunk)
        offset += len(chunk)
        read(len(chunk))
    return digest.hexdigest()


def _image_digests(image: Image, ranges: list[tuple[int, int]], algo: str) -> list[str]:
    """Digests of the image's bytes in each range (ranges ascending), read in one sequential pass."""
    out = []
    with image.open() as stream:
        for start, end in ranges:
            stream.seek(start)
            digest = hashlib.new(algo)
            left = end - start
            while left > 0 and (chunk := stream.read(min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
            out.append(digest.hexdigest())
    return out


def verify(image: Image, bmap: Bmap | None, target: Target) -> int:
    """Read back what was written from the device and compare it with the image; returns the bytes compared."""
    if bmap is not None:
        algo = bmap.checksum_type or "sha256"
        ranges = [(s, e, d if bmap.checksum_type else None) for s, e, d in bmap.ranges]
    else:
        algo, ranges = "sha256", [(0, image.size, None)]
    missing = [(s, e) for s, e, d in ranges if d is None]
    if missing:
        computed = iter(_image_digests(image, missing, algo))
        ranges = [(s, e, d if d is not None else next(computed)) for s, e, d in ranges]
    _sync_and_drop_cache(target)
    fd = os.open(target.path, os.O_RDONLY | (0 if target.is_file else os.O_EXCL))
    total, done = sum(end - start for start, end, _ in ranges), [0]
    try:
        with progress.transfer(f"reading back {target.given}", total) as bar:
            def read(n: int) -> None:
                done[0] += n
                bar(done[0], total)

            for start, end, expected in ranges:
                if _range_digest(fd, start, end, algo, read) != expected:
                    raise PibuildError(f"verification failed: {target.given} differs from {image.path.name} in "
                                       f"bytes {start}-{end - 1}: the card may be faulty or was changed after "
                                       "writing; flash it again or use another card")
    finally:
        os.close(fd)
    return total


def _no_confirm(prompt: str) -> bool:
    raise UsageError(f"{prompt} needs a confirmation: pass yes=True, or a confirm function")


def flash(image: Path, device: str, *, yes: bool = False, force: bool = False,
          confirm: Callable[[str], bool] = _no_confirm,
          after_write: Callable[[str], None] | None = None) -> FlashReport:
    """Write IMAGE to DEVICE and verify it. Every refusal happens before the device is opened for writing.

    `after_write(path)` runs between writing and verifying (a test seam: it may change the device).
    """
    image = Path(image)
    tools.require("bmaptool", "lsblk")
    img = open_image(image)
    target = identify_target(device, img.size, force=force, image_path=image)
    if not target.is_file and not os.access(target.path, os.R_OK | os.W_OK):
        raise NeedsRoot(f"writing {target.given}")
    sha = check_sha256(img)

    with tempfile.TemporaryDirectory(prefix="pibuild-flash-") as tmp:
        bmap_path, method = find_bmap(img), "bmap"
        if bmap_path is None and img.compressed:
            method = "full copy"
            progress.say(f"note: no block map beside {img.path.name}: writing every byte of the image (slower); "
                f"`bmaptool create` on the uncompressed image makes {img.plain_name.name}.bmap")
        elif bmap_path is None:
            method = "bmap (created)"
            progress.say(f"note: no block map beside {img.path.name}: creating one (reads the whole image once)")
            bmap_path = Path(tmp) / f"{img.path.name}.bmap"
            tools.run(["bmaptool", "--quiet", "create", "-o", str(bmap_path), str(img.path)], capture=True)
        bmap = parse_bmap(bmap_path) if bmap_path is not None else None
        if bmap is not None and bmap.image_size != img.size:
            raise PibuildError(f"{bmap.path} describes a {bmap.image_size}-byte image but {img.path.name} is "
                               f"{img.size} bytes: recreate the bmap with `bmaptool create`")
        mapped = bmap.mapped_bytes if bmap else img.size

        progress.say(f"image:  {img.path} ({human(img.size)}, {human(mapped)} to write, {method})")
        progress.say(f"target: {target.describe()}")
        if not yes and not confirm(f"Erase {target.given} and write {img.path.name} to it?"):
            raise PibuildError(f"not confirmed: nothing written to {target.given}")

        unmounted = _unmount(target)
        _claim(target)
        before = sectors_written(target.devno) if not target.is_file else None
        started = time.monotonic()
        with progress.phase(f"writing {target.given}", tool_draws_progress=True):  # bmaptool's own bar on a terminal
            _write(img, bmap, target)
        _sync_and_drop_cache(target)
        write_seconds = time.monotonic() - started
        after = sectors_written(target.devno) if not target.is_file else None
        written = (after - before) * 512 if before is not None and after is not None else None

        if after_write is not None:
            after_write(target.path)
        progress.say(f"verifying {human(mapped)} read back from {target.given}")
        started = time.monotonic()
        verified = verify(img, bmap, target)
        verify_seconds = time.monotonic() - started

    return FlashReport(image, target.given, img.size, mapped, method, sha, unmounted, written, verified,
                       write_seconds, verify_seconds)
