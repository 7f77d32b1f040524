"""A Raspberry Pi Imager repository for the cluster's images: `<cluster>.imager.json` beside the `.img.xz` files.

The format is Imager's OS list (`rpi-imager --repo FILE`, or App Options > Content Repository > Use custom file), as
its documentation describes it (doc/json-schema/os-list-schema.json, doc/schema-notes.md and
doc/os_customisation_formats.md in the rpi-imager repository):

- `imager.devices`: the boards the cluster's nodes are, so Imager's device step offers exactly those; each with the
  device tags Imager filters the OS list by (`pi3-32bit`, `pi4-64bit`, …: the board family and the base's arch);
- `os_list`: one entry for the cluster whose `subitems` are its nodes, each with `url` (the `.img.xz`, as a file: URL
  or under a base URL given), `extract_size` and `extract_sha256` (the `.img`, which Imager checks after
  decompressing), `image_download_size` and `image_download_sha256` (the `.img.xz`), `release_date` (the day the
  image was built), `devices` (its board's tag) and `init_format: none`.

`init_format: none` makes Imager 2 offer no OS customisation: each image already is its node (host name, address,
login, cluster files), and Imager's customisation would overwrite them. Imager 1.x knows no "none" and offers its
customisation anyway (as for any unknown format): the README says to skip it there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

from builder import __version__, compress, progress, tools
from builder.config import Cluster
from builder.errors import PibuildError, UsageError
from builder.image import output_name
from builder.releases import MODELS, imager_tag

INIT_FORMAT = "none"
ICON = Path(__file__).with_name("imager-icon.svg")


def repo_path(outdir: Path, cluster: Cluster) -> Path:
    return outdir / f"{cluster.name}.imager.json"


def check_base_url(base_url: str | None) -> None:
    """--imager-url: where the files will be, as Imager fetches them (before any build starts)."""
    if base_url is not None and not base_url.startswith(("http://", "https://", "file:")):
        raise UsageError(f"--imager-url {base_url!r}: give the URL the .img.xz files will be at, http://, https:// "
                         "or file: (e.g. https://host/cards/ or file:///D:/cards/)")


def _url(path: Path, base_url: str | None) -> str:
    if base_url is None:
        return path.resolve().as_uri()
    return base_url.rstrip("/") + "/" + quote(path.name)


def _extract_sha256(image: Path) -> str:
    """The .img's sha256 from the .img.sha256 the build wrote beside it (sha256sum format, one line)."""
    sums = image.with_name(image.name + ".sha256")
    fields = sums.read_text().split() if sums.is_file() else []
    if len(fields) != 2 or fields[1].lstrip("*") != image.name or len(fields[0]) != 64:
        raise PibuildError(f"{sums}: missing or not the checksum of {image.name}; build the node again")
    return fields[0]


def node_entry(cluster: Cluster, node_name: str, image: Path, xz: Path, icon_url: str,
               base_url: str | None) -> dict:
    node = cluster.node(node_name)
    model = MODELS[node.model]
    b = cluster.base
    role = " It forms the cluster: flash and boot it with the others." if node.name == cluster.initiator.name else ""
    return {
        "name": f"{node.name} ({node.address})",
        "description": (f"Node {node.name} of BIND cluster {cluster.name}, for a {model.description}: "
                        f"{node.address}/{cluster.network.prefix}, {b.release} {b.arch}. Already configured: "
                        f"no OS customisation.{role}"),
        "icon": icon_url,
        "url": _url(xz, base_url),
        "extract_size": image.stat().st_size,
        "extract_sha256": _extract_sha256(image),
        "image_download_size": xz.stat().st_size,
        "image_download_sha256": tools.file_sha256(xz),
        "release_date": time.strftime("%Y-%m-%d", time.gmtime(image.stat().st_mtime)),
        "devices": [imager_tag(node.model, b.arch)],
        "init_format": INIT_FORMAT,
    }


def devices(cluster: Cluster) -> list[dict]:
    """Imager's device step: one entry per board model of the cluster, exclusive (only the images for it)."""
    out = []
    for name in dict.fromkeys(n.model for n in cluster.nodes):
        model = MODELS[name]
        out.append({"name": model.description, "description": f"{model.description} ({cluster.name} nodes)",
                    "tags": [imager_tag(name, cluster.base.arch)], "matching_type": "exclusive"})
    return out


def repository(cluster: Cluster, entries: list[dict], icon_url: str) -> dict:
    b = cluster.base
    return {
        "imager": {"devices": devices(cluster)},
        "os_list": [{
            "name": f"{cluster.name} (pibuild)",
            "description": (f"BIND cluster {cluster.name}: {len(entries)} node image(s), {b.release} {b.arch}, "
                            f"built by pibuild {__version__}. Write each node's image to its own card."),
            "icon": icon_url,
            "subitems": entries,
        }],
    }


def write_repo(cluster: Cluster, outdir: Path, images: list[Path], *, base_url: str | None = None,
               log=progress.say) -> Path:
    """Compress each node image (when not done yet) and write the repository listing them; returns its path."""
    icon = outdir / f"{cluster.name}.imager-icon.svg"
    shutil.copyfile(ICON, icon)
    os.chmod(icon, 0o644)
    icon_url = _url(icon, base_url)
    by_image = {f"{output_name(cluster, n.name)}.img": n.name for n in cluster.nodes}
    entries = []
    for image in images:
        xz = compress.compress(image, log=log)
        entries.append(node_entry(cluster, by_image[image.name], image, xz, icon_url, base_url))
    dest = repo_path(outdir, cluster)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(repository(cluster, entries, icon_url), indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    log(f"    {dest}: Raspberry Pi Imager repository of {len(entries)} image(s)")
    return dest
