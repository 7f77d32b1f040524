"""The `pibuild clients` command: what the LAN's clients need (registered in the CLI group as `clients`)."""

import click

from builder import clients


@click.command("clients")
@click.option("--only", "only", type=click.Choice(clients.KEYS),
              help="Print only this one, without a heading (e.g. `--only resolv.conf > /etc/resolv.conf`).")
@click.pass_context
def clients_cmd(ctx: click.Context, only: str | None) -> None:
    """Print the LAN clients' DNS configuration: resolv.conf, DHCP servers, a router, NetworkManager, networkd."""
    from builder.cli import _load

    cluster = _load(ctx)
    if only:
        click.echo(clients.render(cluster, only), nl=False)
        return
    for i, (target, text) in enumerate(clients.render_all(cluster)):
        click.echo(("\n" if i else "") + f"==== {target.title} ({target.key})")
        click.echo(text, nl=False)
