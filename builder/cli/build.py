"""`pibuild node NODE` and `pibuild all`: build node images."""

from __future__ import annotations

from pathlib import Path

import click

from builder import compress, image, imager
from builder.cli.common import cluster_of, node_name
from builder.config import Cluster

OUTDIR = click.option("-o", "--output", "outdir", default="out", show_default=True,
                      type=click.Path(file_okay=False, path_type=Path))


def outputs(f):
    """--xz, --imager, --imager-url: what is written besides each .img."""
    f = click.option("--imager-url", metavar="URL", default=None,
                     help="With --imager: the URL the .img.xz files will be at (http(s):// or file:, e.g. after "
                          "copying OUTDIR to another computer); default: file: URLs of OUTDIR. Implies --imager.")(f)
    f = click.option("--imager", "with_imager", is_flag=True,
                     help="Also write OUTDIR/CLUSTER.imager.json: a Raspberry Pi Imager repository of the node "
                          "images (rpi-imager --repo FILE). Implies --xz.")(f)
    return click.option("--xz", is_flag=True,
                        help="Also write each image as .img.xz (multithreaded xz) with its own .img.xz.sha256; the "
                             ".img stays.")(f)


def _write_outputs(cluster: Cluster, built: list[Path], outdir: Path, xz: bool, with_imager: bool,
                   imager_url: str | None) -> None:
    if with_imager or imager_url:
        repo = imager.write_repo(cluster, outdir, built, base_url=imager_url)
        click.echo(f"Raspberry Pi Imager: rpi-imager --repo {repo.resolve()}, choose the node, write (README)",
                   err=True)
    elif xz:
        for path in built:
            compress.compress(path)


@click.command()
@click.argument("node")
@OUTDIR
@outputs
@click.pass_context
def node(ctx: click.Context, node: str, outdir: Path, xz: bool, with_imager: bool, imager_url: str | None) -> None:
    """Build NODE's image (the main job)."""
    cluster = cluster_of(ctx)
    imager.check_base_url(imager_url)
    built = image.build_nodes(cluster, [node_name(cluster, node)], outdir)
    _write_outputs(cluster, built, outdir, xz, with_imager, imager_url)
    click.echo(image.secrets_note(cluster, built), err=True)


@click.command(name="all")
@OUTDIR
@outputs
@click.pass_context
def all_nodes(ctx: click.Context, outdir: Path, xz: bool, with_imager: bool, imager_url: str | None) -> None:
    """Build every node's image."""
    cluster = cluster_of(ctx)
    imager.check_base_url(imager_url)
    built = image.build_nodes(cluster, [n.name for n in cluster.nodes], outdir)
    _write_outputs(cluster, built, outdir, xz, with_imager, imager_url)
    click.echo(image.secrets_note(cluster, built), err=True)
