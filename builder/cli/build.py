"""`pibuild node NODE` and `pibuild all`: build node images."""

from __future__ import annotations

from pathlib import Path

import click

from builder import image
from builder.cli.common import cluster_of, node_name

OUTDIR = click.option("-o", "--output", "outdir", default="out", show_default=True,
                      type=click.Path(file_okay=False, path_type=Path))


@click.command()
@click.argument("node")
@OUTDIR
@click.pass_context
def node(ctx: click.Context, node: str, outdir: Path) -> None:
    """Build NODE's image (the main job)."""
    cluster = cluster_of(ctx)
    built = image.build_nodes(cluster, [node_name(cluster, node)], outdir)
    click.echo(image.secrets_note(cluster, built), err=True)


@click.command(name="all")
@OUTDIR
@click.pass_context
def all_nodes(ctx: click.Context, outdir: Path) -> None:
    """Build every node's image."""
    cluster = cluster_of(ctx)
    built = image.build_nodes(cluster, [n.name for n in cluster.nodes], outdir)
    click.echo(image.secrets_note(cluster, built), err=True)
