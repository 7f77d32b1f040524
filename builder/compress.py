"""Compressed outputs: `<name>.img.xz` beside a node's `.img`, and reading one back.

Written by xz itself, multithreaded (`xz -T0`): Python's lzma is single-threaded, and an image is 1.6 GB. The `.img.xz`
gets its own checksum file (sha256sum format) and keeps the `.img.bmap` of the image inside it valid: bmaptool and
`pibuild flash` write an `.img.xz` through that block map. Raspberry Pi Imager reads `.img.xz` as it is.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from builder import progress, tools
from builder.errors import PibuildError

CHUNK = 1 << 20  # bytes read at a time; a chunk of zeros becomes a hole
# xz's default preset: measured on a 1.7 GB node image (README "Compressed images").
PRESET = "-6"
# The compressed file is as secret as the image (README: Secrets); its checksum file is not.
XZ_MODE = 0o600
SUM_MODE = 0o644


def xz_path(image: Path) -> Path:
    return image.with_name(image.name + ".xz")


def _stamp(image: Path) -> Path:
    return image.with_name(f".{image.name}.xz.stamp")


def _identity(image: Path) -> str:
    """Which .img an .img.xz was made from: a rebuilt image is a new file (renamed into place)."""
    st = image.stat()
    return f"{st.st_ino} {st.st_size} {st.st_mtime_ns}"


def compress(image: Path, log=progress.say) -> Path:
    """Write image + '.xz' and its '.xz.sha256' (replacing older ones whole); skipped when both are of this image."""
    tools.require("xz")
    dest, sums, stamp = xz_path(image), Path(f"{xz_path(image)}.sha256"), _stamp(image)
    source = _identity(image)
    if dest.is_file() and sums.is_file() and stamp.is_file() and stamp.read_text().strip() == source:
        log(f"==> {dest}: up to date")
        return dest
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    tmp_sums = sums.with_name(f".{sums.name}.partial-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, XZ_MODE)  # 0600 before a byte is written
        with os.fdopen(fd, "wb") as out, progress.phase(f"{dest.name}: xz --threads=0 {PRESET} (minutes for "
                                                        "a full image)"):
            # --threads=0: one per core. The file size in the header lets readers (xz --list, Imager) see the
            # uncompressed size without decompressing.
            proc = subprocess.run(["xz", "--compress", "--stdout", "--threads=0", PRESET, "--", str(image)],
                                  stdout=out, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                reason = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                raise PibuildError(f"compressing {image} failed: {reason[0]}")
            out.flush()
            os.fsync(out.fileno())
        tmp_sums.write_text(f"{tools.file_sha256(tmp)}  {dest.name}\n")
        os.chmod(tmp_sums, SUM_MODE)
        os.replace(tmp_sums, sums)
        os.replace(tmp, dest)
        stamp.write_text(source + "\n")
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sums.unlink(missing_ok=True)
    log(f"    {dest} ({dest.stat().st_size >> 20} MiB from {image.stat().st_size >> 20} MiB)")
    return dest


def decompress_sparse(src: Path, dest: Path) -> None:
    """Decompress an .xz (xz -dc, multithreaded where the file allows it) into dest, leaving holes for the runs
    of zeros that make up most of an image."""
    tools.require("xz")
    zero = bytes(CHUNK)
    with subprocess.Popen(["xz", "--decompress", "--stdout", "--threads=0", "--", str(src)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc, open(dest, "wb") as out:
        size = 0
        while chunk := proc.stdout.read(CHUNK):
            if chunk == zero[:len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            size += len(chunk)
        out.truncate(size)
        err = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise PibuildError(f"{src}: xz could not decompress it ({err.splitlines()[-1] if err else proc.returncode}); "
                           "is it a complete .img.xz?")
