"""`pibuild validate` and `pibuild render NODE -o DIR`: the config checked, and what a node's image receives."""

from __future__ import annotations

from pathlib import Path

import click

from builder import render as render_mod
from builder import secrets
from builder.cli.common import cluster_of, cluster_with_node, output_dir


@click.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check the config; exit 0, or exit 2 listing every problem."""
    cluster = cluster_of(ctx)
    vips = ", ".join(f"{v.name} {v.address}" for v in cluster.vips)
    click.echo(f"{cluster.source}: ok: cluster {cluster.name}, {len(cluster.nodes)} nodes "
               f"({', '.join(n.name for n in cluster.nodes)}), VIPs {vips}, "
               f"base {cluster.base.source} {cluster.base.release} {cluster.base.arch}")
    if not cluster.login.ssh_authorized_keys and not cluster.login.password_hash:
        click.echo(f"warning: login.user {cluster.login.user} has neither ssh_authorized_keys nor password_hash: "
                   "nobody can log in to the Pis", err=True)


@click.command()
@click.argument("node")
@output_dir("Directory to write the tree into.")
@click.pass_context
def render(ctx: click.Context, node: str, output: Path) -> None:
    """Write every file NODE's image receives, as a tree, for review."""
    cluster = cluster_with_node(ctx, node)
    entries = render_mod.render_node(cluster, node, secrets.hacluster_password(cluster.hacluster_password_file))
    secrets.make_private_dir(output)  # the initiator's tree holds the hacluster password
    render_mod.write_tree(entries, output)
    for e in entries:
        kind = f"-> {e.symlink}" if e.symlink else f"{e.mode:04o}"
        click.echo(f"  /{e.path}  {kind}")
    click.echo(f"{len(entries)} files for {node} written under {output}")
