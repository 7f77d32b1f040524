"""The raspios base: download the official Raspberry Pi OS Lite image, verify it, cache it by checksum.

Layout under the cache root (`$XDG_CACHE_HOME/pibuild`, given by the caller):

    downloads/<name>.partial             a download in progress; the next run resumes it (HTTP Range)
    raspios/<sha256>/<name>.img.xz       the verified download (<sha256> is the .img.xz's published checksum)
    raspios/<sha256>/<name>.img          the decompressed image callers use (read-only)

Only a file whose sha256 matched is renamed into raspios/; a mismatch deletes the partial download. The .img appears
by an atomic rename of a fully written `.img.partial`, which is removed when decompression fails.

Without a pinned `base.url` the newest image of the release is found in Raspberry Pi's directory listing
(`<index>/<raspios_dirs[arch]>/images/<dir>-YYYY-MM-DD/<date>-raspios-<release>-<arch>-lite.img.xz`); the index is
`index_url`, else $PIBUILD_RASPIOS_INDEX, else https://downloads.raspberrypi.com.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import lzma
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests

from builder import progress
from builder.config import Base
from builder.errors import PibuildError
from builder.releases import RELEASES

DEFAULT_INDEX = "https://downloads.raspberrypi.com"
INDEX_ENV = "PIBUILD_RASPIOS_INDEX"
# (connect, read) seconds: a stalled server fails the download instead of hanging it; the next run resumes.
TIMEOUT = (15, 60)
CHUNK = 256 * 1024
USER_AGENT = "pibuild/0.1 (+raspios base download)"

HREF_RE = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
DATE_RE = r"(\d{4}-\d{2}-\d{2})"

# --------------------------------------------------------------------------------------------------------------------
# the entry point


def fetch_raspios(base: Base, cache_root: Path, *, index_url: str | None = None,
                  session: requests.Session | None = None) -> Path:
    """The cached, decompressed Raspberry Pi OS Lite image for base (download, verify, decompress on a miss).

    A pinned base.url with a pinned base.sha256 that is already cached needs no network at all.
    """
    cache_root = Path(cache_root)
    own_session = session is None
    session = session or _session()
    try:
        if base.url:
            url = base.url
        else:
            url = resolve_latest(base, index_url or os.environ.get(INDEX_ENV) or DEFAULT_INDEX, session=session)
            progress.say(f"raspios: newest {base.release} {base.arch} image is {url}")
        name = image_name(url)
        if base.sha256:
            if not SHA256_RE.fullmatch(base.sha256):
                raise PibuildError(f"base.sha256: {base.sha256!r} is not a sha256 digest (64 hex digits)")
            sha256 = base.sha256.lower()
        else:
            sha256 = fetch_sha256(url + ".sha256", session=session)

        entry = cache_root / "raspios" / sha256
        hit = _cached_image(entry, name)
        if hit:
            progress.say(f"raspios: cached {hit}")
            return hit

        # keyed by the partial download's name: two runs must never write the same partial file
        with _locked(cache_root / "locks" / f"raspios-{name}.lock"):
            hit = _cached_image(entry, name)  # another pibuild may have finished it while we waited
            if hit:
                progress.say(f"raspios: cached {hit}")
                return hit
            compressed = entry / f"{name}{_suffix(url)}"
            if not compressed.is_file():
                download(url, compressed, sha256, partial=cache_root / "downloads" / f"{name}.partial",
                         session=session)
            image = entry / f"{name}.img"
            if compressed != image:
                progress.say(f"raspios: decompressing {compressed.name}")
                decompress_xz(compressed, image)
            return image
    finally:
        if own_session:
            session.close()


def _cached_image(entry: Path, name: str) -> Path | None:
    image = entry / f"{name}.img"
    if image.is_file():
        return image
    # keyed by checksum: the same image under another name (another mirror's URL) is the same image
    others = sorted(entry.glob("*.img")) if entry.is_dir() else []
    return others[0] if others else None


def image_name(url: str) -> str:
    """`2024-11-19-raspios-bookworm-arm64-lite` from the image's URL."""
    base = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    for suffix in (".img.xz", ".img"):
        if base.endswith(suffix):
            name = base[: -len(suffix)]
            break
    else:
        raise PibuildError(f"{url}: pibuild takes a Raspberry Pi OS image as .img.xz or .img "
                           f"(decompress other formats and use base.source: file)")
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")
    if not name:
        raise PibuildError(f"{url}: cannot tell the image's name from the URL")
    return name


def _suffix(url: str) -> str:
    return ".img.xz" if urlsplit(url).path.endswith(".xz") else ".img"


# --------------------------------------------------------------------------------------------------------------------
# finding the newest image


def resolve_latest(base: Base, index_url: str = DEFAULT_INDEX, *,
                   session: requests.Session | None = None) -> str:
    """The URL of the newest Raspberry Pi OS Lite .img.xz of base.release and base.arch in the index."""
    release = RELEASES[base.release]
    try:
        directory = release.raspios_dirs[base.arch]
    except KeyError:
        raise PibuildError(f"Raspberry Pi OS Lite has no {base.arch} image of {base.release}") from None
    session = session or _session()
    images_url = f"{index_url.rstrip('/')}/{directory}/images/"
    folder_re = re.compile(re.escape(directory) + "-" + DATE_RE)
    folders: dict[str, str] = {}  # url -> date
    for href in list_hrefs(images_url, session=session):
        segment = _last_segment(href)
        m = folder_re.fullmatch(segment)
        if m:
            folders[urljoin(images_url, href.split("?")[0].split("#")[0]).rstrip("/") + "/"] = m.group(1)
    if not folders:
        raise PibuildError(f"no dated Raspberry Pi OS folders ({directory}-YYYY-MM-DD/) listed at {images_url}; "
                           f"pin base.url and base.sha256 to an image")
    image_re = re.compile(r".*-raspios-" + re.escape(base.release) + r"-.*\.img\.xz")
    for folder, _date in sorted(folders.items(), key=lambda kv: (kv[1], kv[0]), reverse=True):
        images = sorted({_last_segment(h) for h in list_hrefs(folder, session=session)
                         if image_re.fullmatch(_last_segment(h))}, reverse=True)
        if images:
            return urljoin(folder, images[0])
    raise PibuildError(f"no Raspberry Pi OS Lite {base.release} image ({base.arch}) in any folder listed at "
                       f"{images_url}; pin base.url and base.sha256 to an image")


def parse_hrefs(html: str) -> list[str]:
    """Every link target of an HTML directory listing (Apache, nginx or lighttpd style), entities decoded."""
    out = []
    for m in HREF_RE.finditer(html):
        href = next(g for g in m.groups() if g is not None)
        out.append(href.replace("&amp;", "&").strip())
    return out


def list_hrefs(url: str, *, session: requests.Session | None = None) -> list[str]:
    return parse_hrefs(_get(url, session or _session()).text)


def _last_segment(href: str) -> str:
    path = urlsplit(href).path.rstrip("/")
    return unquote(path.rsplit("/", 1)[-1])


def fetch_sha256(url: str, *, session: requests.Session | None = None) -> str:
    """The digest in a sha256sum-format file (`<hex>  <name>`)."""
    text = _get(url, session or _session()).text
    for line in text.splitlines():
        fields = line.split()
        if fields and SHA256_RE.fullmatch(fields[0].lstrip("\\")):
            return fields[0].lstrip("\\").lower()
    raise PibuildError(f"{url} holds no sha256 checksum (expected sha256sum format: '<64 hex digits>  <name>'); "
                       f"pin base.sha256")


# --------------------------------------------------------------------------------------------------------------------
# HTTP


def _session() -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s


def _unreachable(url: str, exc: Exception) -> PibuildError:
    host = urlsplit(url).hostname or url
    return PibuildError(f"cannot reach {host}: {url}: {_reason(exc)} — pin base.url to a mirror or use base.source: "
                        f"file")


def _reason(exc: Exception) -> str:
    # requests nests the cause several levels deep; the innermost message is the informative one
    while exc.args and isinstance(exc.args[0], Exception):
        exc = exc.args[0]
    reason = getattr(exc, "reason", None)
    if isinstance(reason, Exception):
        text = str(reason)
    elif exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]  # not the repr of an args tuple
    else:
        text = str(exc)
    # urllib3 prefixes the connection's repr: "HTTPConnection(host='x', port=80): Failed to establish ..."
    return re.sub(r"^\w+\(host=[^)]*\): ", "", text)


def _get(url: str, session: requests.Session) -> requests.Response:
    try:
        r = session.get(url, timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _unreachable(url, e) from None
    except requests.RequestException as e:
        raise PibuildError(f"cannot fetch {url}: {e}") from None
    if r.status_code != 200:
        raise PibuildError(f"cannot fetch {url}: HTTP {r.status_code} {r.reason}")
    return r


def download(url: str, dest: Path, expected_sha256: str | None, *, partial: Path | None = None,
             session: requests.Session | None = None) -> str:
    """Download url to dest, resuming `partial` (default dest + '.partial') with an HTTP Range request.

    The file is hashed as it arrives. With expected_sha256 a mismatch deletes the partial file and raises
    PibuildError; only a verified file is renamed to dest. Returns the sha256 of the file. An interrupted download
    (network error, Ctrl-C) leaves the partial file for the next run and nothing at dest.
    """
    dest = Path(dest)
    partial = Path(partial) if partial else dest.with_name(dest.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    session = session or _session()
    expected = expected_sha256.lower() if expected_sha256 else None

    offset = partial.stat().st_size if partial.is_file() else 0
    h = hashlib.sha256()
    if offset:
        with open(partial, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)

    r = _open(url, session, offset)
    resumed = offset > 0
    if r.status_code == 416 and offset:
        # nothing left to send: the partial is whole, unless it is longer than the file (then start again)
        size = _content_range_total(r.headers.get("Content-Range", ""))
        r.close()
        if size is not None and size != offset:
            progress.say(f"raspios: the partial download is {offset} bytes, the file {size}: starting again")
            offset, h = 0, hashlib.sha256()
            r = _open(url, session, 0)
    elif r.status_code == 206 and offset:
        start = _content_range_start(r.headers.get("Content-Range", ""))
        if start != offset:
            progress.say(f"raspios: {url} answered the range request from byte {start}, not {offset}: starting again")
            r.close()
            offset, h = 0, hashlib.sha256()
            r = _open(url, session, 0)
    elif r.status_code == 200 and offset:
        progress.say(f"raspios: {urlsplit(url).hostname} does not resume downloads: starting again")
        offset, h = 0, hashlib.sha256()

    if r.status_code == 416 and offset:
        progress.say(f"raspios: {partial.name} is already complete")
    else:
        if r.status_code not in (200, 206):
            r.close()
            raise PibuildError(f"cannot download {url}: HTTP {r.status_code} {r.reason}")
        length = r.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if offset:
            progress.say(f"raspios: resuming {url} at {_mib(offset)} of {_mib(total) if total else '?'}")
        else:
            progress.say(f"raspios: downloading {url}" + (f" ({_mib(total)})" if total else ""))
        done = offset
        try:
            with open(partial, "r+b" if offset else "wb") as f, progress.transfer(partial.name, total, offset) as bar:
                f.seek(offset)
                f.truncate()
                for chunk in r.iter_content(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    bar(done, total)
                f.flush()
                os.fsync(f.fileno())
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            raise PibuildError(f"download of {url} interrupted after {_mib(done)}"
                               f"{' of ' + _mib(total) if total else ''}: {_reason(e)}; run again to resume") from None
        except OSError as e:
            raise _disk_error(e, partial) from None
        finally:
            r.close()
        if total is not None and done != total:
            raise PibuildError(f"download of {url} ended after {_mib(done)} of {_mib(total)}; run again to resume")

    actual = h.hexdigest()
    if expected and actual != expected:
        partial.unlink(missing_ok=True)
        raise PibuildError(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}"
                           + ("" if not resumed else " (the download was resumed)")
                           + "; the download was deleted and nothing was cached. Check base.sha256 (or the .sha256 "
                             "published beside the image) and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, dest)
    return actual


def _open(url: str, session: requests.Session, offset: int) -> requests.Response:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    # the image must arrive byte for byte as published: no transparent decompression of a gzip transfer encoding
    headers["Accept-Encoding"] = "identity"
    try:
        return session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _unreachable(url, e) from None
    except requests.RequestException as e:
        raise PibuildError(f"cannot download {url}: {e}") from None


def _content_range_start(value: str) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value)
    return int(m.group(1)) if m else None


def _content_range_total(value: str) -> int | None:
    m = re.match(r"\s*bytes\s+(?:\*|\d+-\d+)/(\d+)", value)
    return int(m.group(1)) if m else None


def _mib(n: int | None) -> str:
    return f"{(n or 0) / (1 << 20):.1f} MiB"


# --------------------------------------------------------------------------------------------------------------------
# decompression and locking


def decompress_xz(src: Path, dest: Path) -> None:
    """Stream src (.xz) to dest through dest + '.partial', renamed into place only when whole."""
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with lzma.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except lzma.LZMAError as e:
        raise PibuildError(f"{src} is not a valid .xz file ({e}); delete it and run again") from None
    except EOFError:
        raise PibuildError(f"{src} is truncated (the .xz stream ends early); delete it and run again") from None
    except OSError as e:
        raise _disk_error(e, tmp) from None
    finally:
        tmp.unlink(missing_ok=True)


def _disk_error(e: OSError, path: Path) -> PibuildError:
    if e.errno == errno.ENOSPC:
        return PibuildError(f"no space left on the device writing {path}: free some space (the cache is "
                            f"{path.parent.parent}) and run again")
    return PibuildError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One download of an image at a time: a second pibuild waits, then finds it cached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.say("raspios: another pibuild is downloading this image; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
