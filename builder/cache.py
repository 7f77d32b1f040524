"""The build cache: $XDG_CACHE_HOME/pibuild. An entry appears whole or not at all.

Entries are directories built under a temporary name and renamed into place when complete; a failed or
interrupted build removes its temporary directory (never through a mount point), and a build that died harder
leaves one that the next run removes once its process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from builder import mounts, tools

COMPLETE = "complete.json"


# The cluster images carry the login user's keys and password hash: the cache is readable by its owner alone.
PRIVATE_DIR_MODE = 0o700


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pibuild"


def private_root() -> Path:
    """cache_root(), created 0700, or made 0700 if an older pibuild left it readable by others (it is pibuild's)."""
    root = cache_root()
    root.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(root, PRIVATE_DIR_MODE)
    return root


def digest(*parts) -> str:
    """A stable key from JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tree_digest(path: Path) -> str:
    """Paths, modes and contents of every file under path (a data directory's identity)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
            h.update(oct(p.stat().st_mode & 0o777).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def lookup(kind: str, key: str) -> Path | None:
    entry = cache_root() / kind / key
    if (entry / COMPLETE).is_file():
        os.utime(entry)  # last use, for pruning
        return entry
    return None


@contextlib.contextmanager
def locked(kind: str, key: str) -> Iterator[None]:
    """One builder per entry at a time: a second `pibuild node` waits, then finds the entry built."""
    lock_dir = private_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{kind}-{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale(kind: str) -> None:
    """Temporary entries whose builder process is gone."""
    root = cache_root() / kind
    if not root.is_dir():
        return
    for tmp in root.glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if not tools.pid_alive(pid):
            mounts.remove_tree(tmp)


@contextlib.contextmanager
def new_entry(kind: str, key: str, info: dict) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes the entry, on any failure it is removed."""
    root = private_root() / kind
    root.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    remove_stale(kind)
    tmp = root / f".tmp-{key[:16]}-{os.getpid()}"
    mounts.remove_tree(tmp)
    tmp.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(tmp, PRIVATE_DIR_MODE)
    try:
        yield tmp
        (tmp / COMPLETE).write_text(json.dumps({**info, "key": key, "created": time.time()}, indent=2) + "\n")
        final = root / key
        mounts.remove_tree(final)  # an incomplete leftover
        os.rename(tmp, final)
    finally:
        mounts.remove_tree(tmp)
