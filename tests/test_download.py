"""The raspios base download against a local HTTP server (127.0.0.1 only) that mimics downloads.raspberrypi.com.

The server serves a generated fixture image in Raspberry Pi's directory layout, answers Range requests, records every
request, and can be told to cut the connection after N bytes (an interrupted download) or to ignore Range.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import lzma
import random
import re
import shutil
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder import download as dl
from builder import progress
from builder.cli import output
from builder.config import Base
from builder.errors import PibuildError

MiB = 1 << 20
DIR = "raspios_lite_arm64"
NEW = "2024-11-19"
OLD = "2024-07-04"
NAME = f"{NEW}-raspios-bookworm-arm64-lite"
IMAGE_PATH = f"/{DIR}/images/{DIR}-{NEW}/{NAME}.img.xz"


# --------------------------------------------------------------------------------------------------------------------
# the server


@dataclass
class Seen:
    path: str
    range: str | None
    status: int
    sent: int = 0


@dataclass
class Behaviour:
    cut_after: int | None = None  # bytes of a file body to send before dropping the connection
    ignore_range: bool = False  # answer 200 with the whole file, as a server without Range support does
    seen: list[Seen] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    @property
    def behaviour(self) -> Behaviour:
        return self.server.behaviour

    def do_GET(self):  # noqa: N802 (http.server's name)
        root: Path = self.server.root
        path = self.path.split("?", 1)[0]
        target = (root / path.lstrip("/")).resolve()
        rng = self.headers.get("Range")
        seen = Seen(self.path, rng, 0)
        self.behaviour.seen.append(seen)
        if not target.is_relative_to(root) or not target.exists():
            seen.status = 404
            return self._send(404, b"not found", "text/plain")
        if target.is_dir():
            if not path.endswith("/"):
                seen.status = 301
                self.send_response(301)
                self.send_header("Location", path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            seen.status = 200
            return self._send(200, listing(target, path).encode(), "text/html")
        data = target.read_bytes()
        size = len(data)
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and not self.behaviour.ignore_range:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                seen.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, status = data[start:end + 1], 206
        seen.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{size}")
        self.end_headers()
        cut = self.behaviour.cut_after
        if cut is not None and cut < len(data):
            data = data[:cut]
            self.close_connection = True
        for i in range(0, len(data), 64 * 1024):
            self.wfile.write(data[i:i + 64 * 1024])
            seen.sent += len(data[i:i + 64 * 1024])
        self.wfile.flush()
        if self.close_connection:
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, body: bytes, ctype: str):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def listing(directory: Path, path: str) -> str:
    """An Apache-style autoindex page, as downloads.raspberrypi.com serves (sort links, parent, odd quoting)."""
    rows = ['<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>',
            f'<tr><td><a href="{html.escape(path.rstrip("/").rsplit("/", 1)[0] + "/")}">Parent Directory</a></td></tr>']
    for i, p in enumerate(sorted(directory.iterdir())):
        name = p.name + ("/" if p.is_dir() else "")
        # alternate quoting styles: a robust parser takes them all
        href = f'"{name}"' if i % 3 == 0 else (f"'{name}'" if i % 3 == 1 else name)
        rows.append(f'<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td>'
                    f'<td><a HREF={href}>{html.escape(name)}</a></td><td align="right">2024-11-19 12:00  </td></tr>')
    return (f"<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of {path}</title>"
            f"</head><body><h1>Index of {path}</h1><table>\n" + "\n".join(rows) + "\n</table></body></html>\n")


@dataclass
class Fixture:
    url: str  # the index root
    root: Path
    behaviour: Behaviour
    image: bytes  # the decompressed fixture image
    xz: bytes
    sha256: str  # of the .img.xz

    @property
    def image_url(self) -> str:
        return self.url + IMAGE_PATH

    def image_gets(self) -> list[Seen]:
        return [s for s in self.behaviour.seen if s.path.endswith(".img.xz")]


def _write_image(folder: Path, name: str, xz: bytes, digest: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.img.xz").write_bytes(xz)
    digest = digest or hashlib.sha256(xz).hexdigest()
    (folder / f"{name}.img.xz.sha256").write_text(f"{digest}  {name}.img.xz\n")
    (folder / f"{name}.img.xz.torrent").write_bytes(b"d8:announce0:e")  # a decoy, as on the real server
    (folder / f"{name}.info").write_text("packages\n")


@pytest.fixture(scope="module")
def image_data() -> tuple[bytes, bytes]:
    rnd = random.Random(4)
    # 3 MiB: random data (incompressible, so the .xz is big enough to interrupt) and a run of zeros
    image = rnd.randbytes(2 * MiB + 12345) + bytes(MiB)
    return image, lzma.compress(image, preset=0)


@pytest.fixture
def server(tmp_path, image_data, monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(dl.INDEX_ENV, raising=False)
    image, xz = image_data
    root = tmp_path / "www"
    images = root / DIR / "images"
    _write_image(images / f"{DIR}-{NEW}", NAME, xz)
    older = lzma.compress(b"an older image" * 1000, preset=0)
    _write_image(images / f"{DIR}-{OLD}", f"{OLD}-raspios-bookworm-arm64-lite", older)
    # newer than both, but another release: bookworm must not pick it
    _write_image(images / f"{DIR}-2025-10-01", "2025-10-01-raspios-trixie-arm64-lite", lzma.compress(b"trixie"))
    _write_image(images / f"{DIR}-2023-05-03", "2023-05-03-raspios-bullseye-arm64-lite", lzma.compress(b"bull"))
    (images / "README").write_text("not a folder\n")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.root = root.resolve()
    httpd.behaviour = Behaviour()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Fixture(f"http://127.0.0.1:{httpd.server_address[1]}", root, httpd.behaviour, image, xz,
                      hashlib.sha256(xz).hexdigest())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "pibuild"


def base(release="bookworm", arch="arm64", **kw) -> Base:
    return Base(source="raspios", release=release, arch=arch, **kw)


def final_files(cache: Path) -> list[Path]:
    """Everything in the cache's final place."""
    root = cache / "raspios"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------------------------------------------------
# index resolution


def test_index_picks_newest_folder_holding_the_release(server):
    assert dl.resolve_latest(base(), server.url) == server.image_url
    trixie = dl.resolve_latest(base("trixie"), server.url)
    assert trixie.endswith(f"/{DIR}-2025-10-01/2025-10-01-raspios-trixie-arm64-lite.img.xz")
    assert dl.resolve_latest(base(), server.url + "/") == server.image_url  # a trailing slash is fine
    # each folder listing is read newest first, and only until a match
    folders = [s.path for s in server.behaviour.seen if re.search(r"-\d{4}-\d{2}-\d{2}/$", s.path)]
    assert folders == [f"/{DIR}/images/{DIR}-2025-10-01/", f"/{DIR}/images/{DIR}-{NEW}/",
                       f"/{DIR}/images/{DIR}-2025-10-01/", f"/{DIR}/images/{DIR}-2025-10-01/",
                       f"/{DIR}/images/{DIR}-{NEW}/"]


def test_index_without_the_release_or_the_directory(server):
    with pytest.raises(PibuildError, match="raspios_oldstable_lite_arm64/images/: HTTP 404"):
        dl.resolve_latest(base("bullseye"), server.url)
    shutil.rmtree(server.root / DIR / "images" / f"{DIR}-2025-10-01")
    with pytest.raises(PibuildError, match=r"no Raspberry Pi OS Lite trixie image \(arm64\).*pin base.url"):
        dl.resolve_latest(base("trixie"), server.url)


def test_parse_hrefs_apache_listing():
    page = """<tr><td><a href="?C=N;O=D">Name</a></td></tr>
<tr><td><a href="/raspios_lite_arm64/">Parent Directory</a></td></tr>
<tr><td><a href="raspios_lite_arm64-2024-11-19/">raspios_lite_arm64-2024-11-19/</a></td></tr>
<tr><td><A HREF='raspios_lite_arm64-2024-10-28/'>x</A></td></tr>
<tr><td><a class=x href=raspios_lite_arm64-2024-07-04/>x</a></td></tr>
<a href="https://downloads.raspberrypi.com/raspios_lite_arm64/images/raspios_lite_arm64-2025-05-13/">abs</a>
<a href="a&amp;b">amp</a>"""
    assert dl.parse_hrefs(page) == [
        "?C=N;O=D", "/raspios_lite_arm64/", "raspios_lite_arm64-2024-11-19/", "raspios_lite_arm64-2024-10-28/",
        "raspios_lite_arm64-2024-07-04/",
        "https://downloads.raspberrypi.com/raspios_lite_arm64/images/raspios_lite_arm64-2025-05-13/", "a&b"]


def test_image_name():
    assert dl.image_name("https://x/y/2024-11-19-raspios-bookworm-arm64-lite.img.xz") == NAME
    assert dl.image_name("https://x/y/my%20image.img?x=1") == "my_image"
    with pytest.raises(PibuildError, match=r"\.img\.xz or \.img"):
        dl.image_name("https://x/y/2020-08-20-raspios-buster-armhf-lite.zip")


# --------------------------------------------------------------------------------------------------------------------
# checksum good / bad


def test_checksum_good_caches_the_decompressed_image(server, cache):
    image = dl.fetch_raspios(base(), cache, index_url=server.url)
    assert image == cache / "raspios" / server.sha256 / f"{NAME}.img"
    assert image.read_bytes() == server.image
    assert (image.parent / f"{NAME}.img.xz").read_bytes() == server.xz
    assert final_files(cache) == sorted([image, image.parent / f"{NAME}.img.xz"])
    assert not list((cache / "downloads").iterdir())  # no partial left
    assert [s.range for s in server.image_gets()] == [None]


def test_index_from_environment(server, cache, monkeypatch):
    monkeypatch.setenv(dl.INDEX_ENV, server.url)
    image = dl.fetch_raspios(base(), cache)
    assert image.read_bytes() == server.image


def test_pinned_url_and_sha256(server, cache):
    b = base(url=server.image_url, sha256=server.sha256.upper())
    image = dl.fetch_raspios(b, cache, index_url="http://127.0.0.1:9/unused")
    assert image.read_bytes() == server.image
    assert not any(s.path.endswith((".sha256", "/")) for s in server.behaviour.seen)  # no listing, no .sha256


def test_pinned_wrong_sha256_is_an_error_and_caches_nothing(server, cache):
    wrong = "0" * 64
    with pytest.raises(PibuildError) as e:
        dl.fetch_raspios(base(url=server.image_url, sha256=wrong), cache)
    msg = str(e.value)
    assert server.image_url in msg and wrong in msg and server.sha256 in msg
    assert final_files(cache) == []
    assert not list((cache / "downloads").iterdir())  # the bad download is deleted, not kept for resuming


def test_malformed_pinned_sha256_is_refused_before_any_request(server, cache):
    with pytest.raises(PibuildError, match="base.sha256: '../x' is not a sha256 digest"):
        dl.fetch_raspios(base(url=server.image_url, sha256="../x"), cache)
    assert server.behaviour.seen == [] and not cache.exists()


def test_corrupted_sha256_file_is_an_error_and_caches_nothing(server, cache):
    bad = hashlib.sha256(b"something else").hexdigest()
    (server.root / IMAGE_PATH.lstrip("/")).with_suffix(".xz.sha256").write_text(f"{bad}  {NAME}.img.xz\n")
    with pytest.raises(PibuildError, match=f"checksum mismatch for {re.escape(server.image_url)}: "
                                           f"expected sha256 {bad}, got {server.sha256}"):
        dl.fetch_raspios(base(), cache, index_url=server.url)
    assert final_files(cache) == []
    assert not list((cache / "downloads").iterdir())


def test_sha256_file_malformed_or_missing(server, cache):
    sha_file = (server.root / IMAGE_PATH.lstrip("/")).with_suffix(".xz.sha256")
    sha_file.write_text("<html>oops</html>\n")
    with pytest.raises(PibuildError, match="holds no sha256 checksum.*pin base.sha256"):
        dl.fetch_raspios(base(), cache, index_url=server.url)
    sha_file.unlink()
    with pytest.raises(PibuildError, match=r"\.img\.xz\.sha256: HTTP 404"):
        dl.fetch_raspios(base(), cache, index_url=server.url)
    assert final_files(cache) == []
    assert server.image_gets() == []  # no image download without a checksum to verify it


def test_unreachable_names_the_url_and_the_fix(cache):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = f"http://127.0.0.1:{port}"
    with pytest.raises(PibuildError, match=rf"cannot reach 127\.0\.0\.1: {index}/{DIR}/images/: .*"
                                           r"pin base.url to a mirror or use base.source: file"):
        dl.fetch_raspios(base(), cache, index_url=index)


# --------------------------------------------------------------------------------------------------------------------
# interrupted and resumed


def test_interrupted_download_resumes_with_a_range_request(server, cache):
    cut = MiB + 4321
    server.behaviour.cut_after = cut
    with pytest.raises(PibuildError, match=f"download of {re.escape(server.image_url)} interrupted.*run again"):
        dl.fetch_raspios(base(), cache, index_url=server.url)
    partial = cache / "downloads" / f"{NAME}.partial"
    assert 0 < partial.stat().st_size <= cut
    assert final_files(cache) == []  # nothing in the final place

    server.behaviour.cut_after = None
    server.behaviour.seen.clear()
    image = dl.fetch_raspios(base(), cache, index_url=server.url)
    assert image.read_bytes() == server.image
    [get] = server.image_gets()
    assert get.range == f"bytes={partial_size_before(get)}-" and get.status == 206
    assert 0 < get.sent < len(server.xz)
    assert not partial.exists()


def partial_size_before(get: Seen) -> int:
    return int(re.fullmatch(r"bytes=(\d+)-", get.range).group(1))


def test_interrupted_twice_then_completed(server, cache):
    server.behaviour.cut_after = MiB // 2
    for _ in range(2):
        with pytest.raises(PibuildError, match="interrupted"):
            dl.fetch_raspios(base(), cache, index_url=server.url)
    assert (cache / "downloads" / f"{NAME}.partial").stat().st_size > MiB // 2
    server.behaviour.cut_after = None
    assert dl.fetch_raspios(base(), cache, index_url=server.url).read_bytes() == server.image
    assert [s.status for s in server.image_gets()] == [200, 206, 206]


def test_resume_against_a_server_without_range_support_restarts(server, cache):
    partial = cache / "downloads" / f"{NAME}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"garbage that is not the image")  # would fail the checksum if appended to
    server.behaviour.ignore_range = True
    messages = []
    with progress.using(progress.Reporter(messages.append)):
        image = dl.fetch_raspios(base(), cache, index_url=server.url)
    assert image.read_bytes() == server.image
    [get] = server.image_gets()
    assert get.range and get.status == 200 and get.sent == len(server.xz)
    assert any("does not resume" in m for m in messages)


def test_complete_partial_gets_416_and_is_verified(server, cache):
    partial = cache / "downloads" / f"{NAME}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(server.xz)
    image = dl.fetch_raspios(base(), cache, index_url=server.url)
    assert image.read_bytes() == server.image
    assert [(s.status, s.sent) for s in server.image_gets()] == [(416, 0)]


def test_partial_longer_than_the_file_restarts(server, cache):
    partial = cache / "downloads" / f"{NAME}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(server.xz + b"trailing junk")
    image = dl.fetch_raspios(base(), cache, index_url=server.url)
    assert image.read_bytes() == server.image
    assert [s.status for s in server.image_gets()] == [416, 200]


def test_keyboard_interrupt_leaves_the_partial_and_no_final_file(server, tmp_path):
    dest = tmp_path / "final" / "x.img.xz"
    partial = tmp_path / "dl" / "x.partial"

    def ctrl_c(done, total):
        if done > MiB:
            raise KeyboardInterrupt

    class CtrlC(progress.Reporter):
        @contextlib.contextmanager
        def transfer(self, what, total, done):
            yield ctrl_c

    with progress.using(CtrlC()), pytest.raises(KeyboardInterrupt):
        dl.download(server.image_url, dest, server.sha256, partial=partial)
    assert partial.stat().st_size > MiB and not dest.exists() and not dest.parent.exists()
    assert dl.download(server.image_url, dest, server.sha256, partial=partial) == server.sha256
    assert dest.read_bytes() == server.xz and not partial.exists()
    assert server.image_gets()[-1].range == f"bytes={len(server.xz) - server.image_gets()[-1].sent}-"


# --------------------------------------------------------------------------------------------------------------------
# cache hits and decompression


def test_second_fetch_is_a_cache_hit(server, cache):
    first = dl.fetch_raspios(base(), cache, index_url=server.url)
    server.behaviour.seen.clear()
    assert dl.fetch_raspios(base(), cache, index_url=server.url) == first
    assert server.image_gets() == []  # only the listings and the small .sha256
    assert all(s.path.endswith(("/", ".sha256")) for s in server.behaviour.seen)


def test_cache_hit_with_pinned_url_and_sha256_needs_no_network(server, cache):
    b = base(url=server.image_url, sha256=server.sha256)
    first = dl.fetch_raspios(b, cache)
    server.behaviour.seen.clear()
    offline = base(url="http://127.0.0.1:9/unreachable/" + f"{NAME}.img.xz", sha256=server.sha256)
    assert dl.fetch_raspios(offline, cache) == first
    assert dl.fetch_raspios(b, cache) == first
    assert server.behaviour.seen == []


def test_bad_xz_with_a_good_checksum_leaves_no_image(server, cache):
    bad = b"\xfd7zXZ\x00 this is not really xz" * 100
    folder = server.root / DIR / "images" / f"{DIR}-2026-01-01"
    _write_image(folder, "2026-01-01-raspios-bookworm-arm64-lite", bad)
    with pytest.raises(PibuildError, match="not a valid .xz file"):
        dl.fetch_raspios(base(), cache, index_url=server.url)
    entry = cache / "raspios" / hashlib.sha256(bad).hexdigest()
    assert [p.name for p in entry.iterdir()] == ["2026-01-01-raspios-bookworm-arm64-lite.img.xz"]  # no .img(.partial)


def test_verified_xz_without_image_is_decompressed_without_download(server, cache):
    image = dl.fetch_raspios(base(), cache, index_url=server.url)
    image.unlink()
    server.behaviour.seen.clear()
    assert dl.fetch_raspios(base(), cache, index_url=server.url).read_bytes() == server.image
    assert server.image_gets() == []


def test_progress_bar_on_a_terminal(server, cache, capsys):
    with progress.using(output.reporter_for(sys.stderr, terminal=True)):
        image = dl.fetch_raspios(base(), cache, index_url=server.url)
    assert image.read_bytes() == server.image
    assert f"{NAME}.partial" in capsys.readouterr().err  # rich drew its bar on stderr
