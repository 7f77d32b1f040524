"""Bench: bytes `pibuild flash` writes to the card, against the image size and the blocks the image maps.

Run as root: python bench/flash.py [--size-mib 1024] [--content DIR]

It builds a Raspberry-Pi-shaped image (an msdos label, a 256 MiB FAT boot partition, an ext4 root filled from
--content with `mke2fs -d`), makes its .bmap and .sha256, attaches a sparse file of the image's size as a loop device
and flashes it with builder.flash.flash(force=True, yes=True). Then, for comparison, it writes the same image to a
second loop device with a full copy (`bmaptool copy --nobmap`, what dd does).

How bytes written are measured: the kernel counts sectors written to each block device (field 7 of
/sys/block/loopN/stat, 512-byte units). The difference across the write (flash syncs before it returns) is what
reached the device, page-cache writeback included; reads for verification do not count. The counters outlive a
loop device's detaching, hence the difference rather than the value.

Target (issue 8): bytes written <= 1.05 x mapped bytes. Exit status 1 when it is missed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder import progress  # noqa: E402
from builder.flash import flash, human, parse_bmap  # noqa: E402

MiB = 1 << 20
BOOT_START, BOOT_SIZE = 8192, 256 * MiB // 512  # sectors


def sh(*argv: str, **kw) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw).stdout


def sectors_written(dev: str) -> int:
    return int(Path(f"/sys/block/{os.path.basename(dev)}/stat").read_text().split()[6])


def make_image(path: Path, size: int, content: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    root_start = BOOT_START + BOOT_SIZE
    sh("sfdisk", "-q", str(path), input=f"label: dos\nstart={BOOT_START}, size={BOOT_SIZE}, type=c\n"
                                         f"start={root_start}, type=83\n")
    sh("mkfs.fat", "-F", "32", f"--offset={BOOT_START}", str(path), str(BOOT_SIZE * 512 // 1024))
    root_kib = (size - root_start * 512) // 1024
    sh("mke2fs", "-q", "-t", "ext4", "-d", str(content), "-E", f"offset={root_start * 512}", str(path),
       f"{root_kib}k")
    sh("bmaptool", "--quiet", "create", "-o", f"{path}.bmap", str(path))
    digest = sh("sha256sum", str(path)).split()[0]
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    parser.add_argument("--content", type=Path, default=Path("/usr/share/doc"),
                        help="directory copied into the root filesystem (default /usr/share/doc)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/flash.py needs root (loop devices)", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="pibuild-bench-flash-") as tmp:
        tmpdir = Path(tmp)
        image = tmpdir / "bench.img"
        make_image(image, size, args.content)
        mapped = parse_bmap(Path(f"{image}.bmap")).mapped_bytes
        loops: list[str] = []
        try:
            results = []
            for method in ("pibuild flash (bmap)", "full copy (bmaptool --nobmap)"):
                card = tmpdir / f"card{len(loops)}.bin"
                with open(card, "wb") as f:
                    f.truncate(size)
                dev = sh("losetup", "-f", "--show", str(card)).strip()
                loops.append(dev)
                before = sectors_written(dev)
                started = time.monotonic()
                if method.startswith("pibuild"):
                    with progress.using(progress.Reporter()):  # silent: the table is the output
                        report = flash(image, dev, yes=True, force=True)
                    seconds = f"{report.write_seconds:.2f} s + verify {report.verify_seconds:.2f} s"
                else:
                    sh("bmaptool", "--quiet", "copy", "--nobmap", str(image), dev)
                    sh("sync")
                    seconds = f"{time.monotonic() - started:.2f} s"
                written = (sectors_written(dev) - before) * 512
                results.append((method, written, seconds))
        finally:
            for dev in loops:
                subprocess.run(["losetup", "-d", dev], check=False)

    print(f"image size       {size:>14,d} B  ({human(size)})")
    print(f"mapped (bmap)    {mapped:>14,d} B  ({human(mapped)}, {100 * mapped / size:.1f} % of the image)")
    for method, written, seconds in results:
        print(f"{method:<31} wrote {written:>14,d} B = {written / mapped:.3f} x mapped, "
              f"{written / size:.3f} x image; {seconds}")
    ratio = results[0][1] / mapped
    verdict = "met" if ratio <= 1.05 else "MISSED"
    print(f"target: bytes written <= 1.05 x mapped: {ratio:.3f} -> {verdict}")
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    if not shutil.which("bmaptool"):
        sys.exit("bmaptool is missing: apt-get install bmap-tools")
    sys.exit(main())
