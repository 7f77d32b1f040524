"""The hacluster password: generated once into a 0600 file beside cluster.yaml, hashed for the images."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from builder import tools
from builder.errors import PibuildError


def hacluster_password(path: Path) -> str:
    """Read the password, creating the file 0600 with a random one when it is missing."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PibuildError(f"secrets.hacluster_password_file: {path} is readable by others (mode {mode:04o}): "
                           f"run `chmod 600 {path}`")
    password = path.read_text().strip()
    if not password or not password.isprintable():
        raise PibuildError(f"secrets.hacluster_password_file: {path} must hold the password on one line of "
                           "printable characters")
    return password


def crypt_hash(password: str) -> str:
    """A SHA-512 crypt hash for /etc/shadow; the password goes through stdin, never argv."""
    proc = tools.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture=True)
    return proc.stdout.strip()


def make_private_dir(path: Path) -> None:
    """Create path 0700 when missing, for output that carries secrets; a directory that exists is the user's and
    keeps its mode."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode passes through the umask
