"""What the verbs share: the config named by -c (or found), and checking a node name against it."""

from __future__ import annotations

from pathlib import Path

import click

from builder import config as config_mod
from builder import resources
from builder.errors import UsageError


def load_config(given: str | Path | None) -> config_mod.Cluster:
    """The config at `given`, else ./cluster.yaml, else the bundled example; says which it used (and its warnings)."""
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise UsageError(f"-c {given}: no such file; write one from the bundled example "
                             f"(`pibuild render` shows what it produces) or drop -c")
    elif Path("cluster.yaml").exists():
        path = Path("cluster.yaml")
    else:
        path = resources.example_config()
    if path == resources.example_config():
        # The bundled example is read as if copied here: its secrets/ lands in the current directory.
        click.echo(f"using the bundled example {path} (the seed's cluster); secrets go under {Path.cwd()}", err=True)
        cluster = config_mod.load(path, base_dir=Path.cwd())
    else:
        click.echo(f"using {path}", err=True)
        cluster = config_mod.load(path)
    for warning in cluster.warnings:
        click.echo(f"warning: {warning}", err=True)
    return cluster


def cluster_of(ctx: click.Context) -> config_mod.Cluster:
    """The config of this invocation (the group's -c)."""
    return load_config(ctx.find_root().obj.get("config_path"))


def node_name(cluster: config_mod.Cluster, name: str) -> str:
    known = [n.name for n in cluster.nodes]
    if name not in known:
        raise UsageError(f"node {name!r} is not in {cluster.source}; nodes are: {', '.join(known)}")
    return name


def cluster_with_node(ctx: click.Context, node: str) -> config_mod.Cluster:
    """The config of this invocation, which must have `node`."""
    cluster = cluster_of(ctx)
    node_name(cluster, node)
    return cluster


def output_dir(help_text: str):
    """The -o DIR option of the verbs that write a tree."""
    return click.option("-o", "--output", "output", required=True,
                        type=click.Path(file_okay=False, path_type=Path), help=help_text)
