"""`pibuild clients`: what the LAN's clients need, printed from the config (builder.clients renders it)."""

from __future__ import annotations

import click

from builder import clients as clients_mod
from builder.cli.common import cluster_of


@click.command()
@click.option("--only", "only", type=click.Choice(clients_mod.KEYS),
              help="Print only this one, without a heading (e.g. `--only resolv.conf > /etc/resolv.conf`).")
@click.pass_context
def clients(ctx: click.Context, only: str | None) -> None:
    """Print the LAN clients' DNS configuration: resolv.conf, DHCP servers, a router, NetworkManager, networkd."""
    cluster = cluster_of(ctx)
    if only:
        click.echo(clients_mod.render(cluster, only), nl=False)
        return
    for i, (target, text) in enumerate(clients_mod.render_all(cluster)):
        click.echo(("\n" if i else "") + f"==== {target.title} ({target.key})")
        click.echo(text, nl=False)
