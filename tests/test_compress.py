"""`.img.xz` outputs (builder/compress.py): written by multithreaded xz, with their own checksum, written back to a
card by `pibuild flash` through the image's block map, and decompressed with holes for `pibuild smoke`."""

import hashlib
import lzma
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_flash import IMAGE_SIZE, loops, make_image, no_confirm, sha256_file  # noqa: F401 (fixture)

from builder import compress
from builder.errors import PibuildError
from builder.flash import flash

pytestmark = pytest.mark.skipif(not shutil.which("xz"), reason="needs xz-utils")


def xz_blocks(path: Path) -> int:
    """The number of xz blocks in the file: one when xz ran single-threaded, one per block size when threaded."""
    out = subprocess.run(["xz", "--robot", "--list", str(path)], capture_output=True, text=True, check=True).stdout
    totals = next(line.split("\t") for line in out.splitlines() if line.startswith("totals"))
    return int(totals[2])


@pytest.fixture
def big_image(tmp_path) -> Path:
    """An image past xz's threaded block size (3 x the 8 MiB dictionary of -6), quick to compress: a repeated
    random block every 16 MiB, zeros between."""
    img = tmp_path / "clst-node.img"
    pattern = os.urandom(4096) * 64
    with open(img, "wb") as f:
        f.truncate(64 << 20)
        for offset in range(0, 64 << 20, 16 << 20):
            f.seek(offset)
            f.write(pattern)
    return img


def test_compress_writes_xz_and_its_checksum_multithreaded(big_image):
    xz = compress.compress(big_image)
    assert xz == big_image.with_name("clst-node.img.xz")
    assert lzma.decompress(xz.read_bytes()) == big_image.read_bytes()
    sums = Path(f"{xz}.sha256").read_text()
    assert sums == f"{sha256_file(xz)}  clst-node.img.xz\n"
    assert subprocess.run(["sha256sum", "-c", f"{xz.name}.sha256"], cwd=xz.parent, capture_output=True).returncode == 0
    assert xz_blocks(xz) >= 2, "one block: xz ran single-threaded"
    assert os.stat(xz).st_mode & 0o777 == 0o600  # as secret as the image
    assert os.stat(f"{xz}.sha256").st_mode & 0o777 == 0o644
    assert not [p for p in xz.parent.iterdir() if "partial" in p.name]


def test_compress_skips_an_up_to_date_xz_and_redoes_a_changed_image(big_image):
    xz = compress.compress(big_image)
    first = xz.stat().st_mtime_ns
    started = time.monotonic()
    said: list[str] = []
    assert compress.compress(big_image, log=said.append) == xz
    assert time.monotonic() - started < 1.0  # compressing it takes seconds
    assert xz.stat().st_mtime_ns == first and "up to date" in said[0]
    # A rebuilt image is a new file renamed into place, as the build does it.
    new = big_image.with_name(".new.img")
    shutil.copyfile(big_image, new)
    with open(new, "r+b") as f:
        f.write(b"changed")
    os.replace(new, big_image)
    compress.compress(big_image)
    assert lzma.decompress(xz.read_bytes()) == big_image.read_bytes()


def test_compress_failure_leaves_nothing(tmp_path):
    missing = tmp_path / "gone.img"
    missing.write_bytes(b"x")
    os.chmod(missing, 0)  # root reads it anyway: use a directory instead, which xz refuses
    directory = tmp_path / "dir.img"
    directory.mkdir()
    with pytest.raises(PibuildError, match="compressing .*dir.img failed"):
        compress.compress(directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.img", "gone.img"]


def test_decompress_sparse_is_exact_and_leaves_holes(big_image, tmp_path):
    xz = compress.compress(big_image)
    out = tmp_path / "back.img"
    compress.decompress_sparse(xz, out)
    assert sha256_file(out) == sha256_file(big_image)
    assert out.stat().st_size == big_image.stat().st_size
    assert out.stat().st_blocks * 512 <= 4 << 20  # data in four 1 MiB chunks of 64 MiB


def test_decompress_sparse_names_a_damaged_file(tmp_path):
    bad = tmp_path / "bad.img.xz"
    bad.write_bytes(lzma.compress(b"x" * 100000)[:-20])
    with pytest.raises(PibuildError, match="bad.img.xz: xz could not decompress it"):
        compress.decompress_sparse(bad, tmp_path / "bad.img")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices)")
def test_xz_output_round_trips_through_flash_to_a_loop_device(tmp_path, loops):  # noqa: F811
    """What `pibuild all --xz` leaves (node.img.xz, its .sha256, the .img.bmap) is what `pibuild flash` writes: the
    card ends up byte for byte the .img, and the xz's own checksum is the one checked."""
    image = make_image(tmp_path)
    want = sha256_file(image)
    xz = compress.compress(image)
    os.unlink(image)
    os.unlink(f"{image}.sha256")  # only node.img.xz, node.img.xz.sha256 and node.img.bmap remain
    dev = loops(tmp_path / "card.bin", size=IMAGE_SIZE)
    report = flash(xz, dev, yes=True, force=True, confirm=no_confirm)
    assert report.method == "bmap" and report.sha256 == "checked"
    assert report.image_size == IMAGE_SIZE
    assert sha256_file(dev, IMAGE_SIZE) == want
    # The checksum checked is the .img.xz's own: a damaged one is refused before anything is written.
    Path(f"{xz}.sha256").write_text(f"{hashlib.sha256(b'other').hexdigest()}  {xz.name}\n")
    with pytest.raises(PibuildError, match="does not match"):
        flash(xz, dev, yes=True, force=True, confirm=no_confirm)
