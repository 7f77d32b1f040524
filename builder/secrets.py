"""The cluster's secrets: the hacluster password and the corosync secret, each generated once into a 0600 file
beside cluster.yaml; the password hashed for the images, the corosync authkey derived for them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from builder import tools
from builder.errors import PibuildError

# What corosync-keygen and pcs make; corosync reads at most 4096 bytes.
COROSYNC_AUTHKEY_BYTES = 256
COROSYNC_SECRET_BYTES = 64


def _private_file(path: Path, key: str, new_content: str) -> str:
    """The file's text, creating it 0600 (its directory 0700) with new_content when it is missing."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_content)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PibuildError(f"{key}: {path} is readable by others (mode {mode:04o}): run `chmod 600 {path}`")
    return path.read_text()


def hacluster_password(path: Path) -> str:
    """Read the password, creating the file 0600 with a random one when it is missing."""
    password = _private_file(path, "secrets.hacluster_password_file", secrets.token_urlsafe(24) + "\n").strip()
    if not password or not password.isprintable():
        raise PibuildError(f"secrets.hacluster_password_file: {path} must hold the password on one line of "
                           "printable characters")
    return password


def corosync_authkey(path: Path, cluster: str, nodes: list[tuple[str, str]]) -> bytes:
    """The corosync authkey every card of this cluster carries: derived from the secret in path (created 0600 with
    random bytes when missing) and the cluster's identity, its name and its (name, address) node list.

    Corosync only talks to a node holding the same key, so a card built for another cluster.name or node list can
    never join this cluster's membership, even when it was built with a copy of the same secrets directory. The
    derivation is HKDF-Expand (RFC 5869) with HMAC-SHA512, the secret as its key and the identity as its info.
    """
    text = _private_file(path, "secrets.corosync_key_file", secrets.token_hex(COROSYNC_SECRET_BYTES) + "\n").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise PibuildError(f"secrets.corosync_key_file: {path} must hold at least 32 random bytes as hexadecimal on "
                           "one line (delete it to have a new one made, then rebuild every node's image)")
    info = json.dumps({"cluster": cluster, "nodes": [list(n) for n in nodes]}, separators=(",", ":")).encode()
    key, block, counter = b"", b"", 1
    while len(key) < COROSYNC_AUTHKEY_BYTES:
        block = hmac.new(secret, block + info + bytes([counter]), hashlib.sha512).digest()
        key += block
        counter += 1
    return key[:COROSYNC_AUTHKEY_BYTES]


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
