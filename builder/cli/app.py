"""The `pibuild` group, every verb on it, and the one place where failures become messages and exit codes."""

from __future__ import annotations

import sys

import click

from builder import __version__, progress, tools
from builder.cli import build, clients, flash, lab, output, pigen, smoke, validate
from builder.errors import PibuildError


def _fail(message: str, code: int):
    click.echo(message, err=True)
    raise click.exceptions.Exit(code)


class Group(click.Group):
    """The top group: an expected failure of any verb is one line on stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with progress.using(output.reporter_for(sys.stderr)):
                return super().invoke(ctx)
        except PibuildError as exc:
            _fail(f"error: {exc}", exc.exit_code)
        except OSError as exc:
            # No space, permission denied, …: name the file and the reason, not a traceback.
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            _fail(f"error: {exc.strerror or exc}{where}", 1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="CONFIG",
              help="cluster.yaml to use (default ./cluster.yaml, else the bundled example).")
@click.version_option(__version__, prog_name="pibuild")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Build flash-ready Raspberry Pi images for a highly available BIND cluster, one per node."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


for _command in (validate.validate, validate.render, build.node, build.all_nodes, flash.flash, smoke.smoke,
                 lab.lab, pigen.pigen, clients.clients):
    cli.add_command(_command)


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
    except KeyboardInterrupt:
        click.echo("interrupted: cleaned up", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
