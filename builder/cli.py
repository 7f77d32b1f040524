"""The `pibuild` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from builder import __version__, resources, tools
from builder import config as config_mod
from builder.errors import PibuildError, UsageError


def _load(ctx: click.Context) -> config_mod.Cluster:
    """The config named by -c, else ./cluster.yaml, else the bundled example; says which it used."""
    given = ctx.obj.get("config_path")
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


def _node_name(cluster: config_mod.Cluster, name: str) -> str:
    known = [n.name for n in cluster.nodes]
    if name not in known:
        raise UsageError(f"node {name!r} is not in {cluster.source}; nodes are: {', '.join(known)}")
    return name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG",
              help="cluster.yaml to use (default ./cluster.yaml, else the bundled example).")
@click.version_option(__version__, prog_name="pibuild")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Build flash-ready Raspberry Pi images for a highly available BIND cluster, one per node."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@cli.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check the config; exit 0, or exit 2 listing every problem."""
    cluster = _load(ctx)
    vips = ", ".join(f"{v.name} {v.address}" for v in cluster.vips)
    click.echo(f"{cluster.source}: ok: cluster {cluster.name}, {len(cluster.nodes)} nodes "
               f"({', '.join(n.name for n in cluster.nodes)}), VIPs {vips}, "
               f"base {cluster.base.source} {cluster.base.release} {cluster.base.arch}")
    if not cluster.login.ssh_authorized_keys and not cluster.login.password_hash:
        click.echo(f"warning: login.user {cluster.login.user} has neither ssh_authorized_keys nor password_hash: "
                   "nobody can log in to the Pis", err=True)


@cli.command()
@click.argument("node")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the tree into.")
@click.pass_context
def render(ctx: click.Context, node: str, output: Path) -> None:
    """Write every file NODE's image receives, as a tree, for review."""
    from builder import render as render_mod
    from builder import secrets

    cluster = _load(ctx)
    _node_name(cluster, node)
    entries = render_mod.render_node(cluster, node, secrets.hacluster_password(cluster.hacluster_password_file))
    secrets.make_private_dir(output)  # the initiator's tree holds the hacluster password
    render_mod.write_tree(entries, output)
    for e in entries:
        kind = f"-> {e.symlink}" if e.symlink else f"{e.mode:04o}"
        click.echo(f"  /{e.path}  {kind}")
    click.echo(f"{len(entries)} files for {node} written under {output}")


@cli.command()
@click.argument("node")
@click.option("-o", "--output", "outdir", default="out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def node(ctx: click.Context, node: str, outdir: Path) -> None:
    """Build NODE's image (the main job)."""
    from builder import image

    cluster = _load(ctx)
    built = image.build_nodes(cluster, [_node_name(cluster, node)], outdir)
    click.echo(image.secrets_note(cluster, built), err=True)


@cli.command(name="all")
@click.option("-o", "--output", "outdir", default="out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def all_nodes(ctx: click.Context, outdir: Path) -> None:
    """Build every node's image."""
    from builder import image

    cluster = _load(ctx)
    built = image.build_nodes(cluster, [n.name for n in cluster.nodes], outdir)
    click.echo(image.secrets_note(cluster, built), err=True)


def _register_optional(name: str, module: str, attr: str, help_text: str) -> None:
    """Verbs whose module is not built yet say so and exit 1."""
    try:
        mod = __import__(module, fromlist=[attr])
        cli.add_command(getattr(mod, attr), name=name)
    except ImportError:
        @cli.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def _missing(args):
            raise PibuildError(f"`pibuild {name}` is not available in this version yet")


_register_optional("flash", "builder.cli_flash", "flash_cmd", "Write an image to an SD card, safely, and verify it.")
_register_optional("smoke", "builder.smoke", "smoke_cmd", "Boot the image in QEMU and check it; exit 0 or 1.")
_register_optional("lab", "builder.lab", "lab_cmd", "The whole cluster in QEMU on a virtual LAN; failover drills.")
_register_optional("pigen", "builder.export", "pigen_cmd", "Export the stages as a pi-gen stage directory + config.")
_register_optional("clients", "builder.cli_clients", "clients_cmd", "Print the LAN clients' DNS configuration.")


def main(argv: list[str] | None = None) -> None:
    tools.terminate_as_interrupt()
    try:
        rv = cli.main(args=argv, prog_name="pibuild", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except PibuildError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: cleaned up", err=True)
        sys.exit(130)
    except OSError as exc:
        # No space, permission denied, …: name the file and the reason, not a traceback.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
