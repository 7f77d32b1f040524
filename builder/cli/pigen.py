"""`pibuild pigen NODE -o DIR`: the exported tree listed; builder.export does the work."""

from __future__ import annotations

import os
from pathlib import Path

import click

from builder import export
from builder.cli.common import cluster_with_node, output_dir


def _tree(root: Path) -> list[str]:
    lines = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            lines.append(f"  {rel} -> {os.readlink(p)}")
        elif p.is_dir():
            lines.append(f"  {rel}/")
        else:
            lines.append(f"  {rel}  {p.stat().st_mode & 0o7777:04o}")
    return lines


@click.command(name="pigen")
@click.argument("node")
@output_dir("Directory to write config and stage-pibuild-NODE/ into (one directory per node).")
@click.pass_context
def pigen(ctx: click.Context, node: str, output: Path) -> None:
    """Export NODE as a pi-gen build: DIR/config and the stage DIR/stage-pibuild-NODE/."""
    cluster = cluster_with_node(ctx, node)
    stage = export.export_pigen(cluster, node, output)
    click.echo(f"  {output / 'config'}")
    click.echo(f"  {stage}/")
    for line in _tree(stage):
        click.echo(f"  {line}")
    if node == cluster.initiator.name:
        click.echo(f"note: {stage.name}/ holds the hacluster password ({node} forms the cluster): keep it private",
                   err=True)
    click.echo(f"pi-gen build of {node} written under {output}: in a pi-gen checkout of branch "
               f"{export.pigen_branch(cluster)}, run `sudo ./build.sh -c {output.resolve() / 'config'}`")
