"""`pibuild lab up|status|drill|down`: options and printing; builder.lab does the work."""

from __future__ import annotations

import json
from pathlib import Path

import click

from builder import lab as lab_mod
from builder import lookups
from builder.cli.common import cluster_of
from builder.errors import PibuildError


def _lab(ctx: click.Context) -> lab_mod.Lab:
    """This config's lab, on a host that can run one (root, ip, qemu-img)."""
    lab_mod.check_host()
    return lab_mod.lab_for(cluster_of(ctx))


@click.group(name="lab")
def lab() -> None:
    """The whole cluster in QEMU on a virtual LAN; failover drills."""


@lab.command(name="up")
@click.option("--images", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory holding the node images (`pibuild all -o DIR`).")
@click.pass_context
def up(ctx: click.Context, images: Path) -> None:
    """Boot every node on a virtual LAN and wait until the cluster formed and every VIP answers."""
    lab_mod.up(_lab(ctx), images)


@lab.command(name="down")
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop every VM; delete the namespace and the overlays."""
    the_lab = _lab(ctx)
    removed = lab_mod.down(the_lab)
    for what in removed:
        click.echo(f"removed {what}")
    click.echo("lab down: nothing left" if removed else f"no lab for {the_lab.cluster.name} was up")


@lab.command(name="status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """The nodes, where each VIP runs, and a `pcs status` summary."""
    the_lab = _lab(ctx)
    st = lab_mod.status(the_lab)
    for node in the_lab.nodes:
        click.echo(f"node {node.name} {node.address}: QEMU pid {st.pids[node.name]}, {node.tap}")
    click.echo(f"online: {', '.join(st.state.online) or 'none'}")
    for v in the_lab.cluster.vips:
        on = ", ".join(st.state.where.get(v.name, ())) or "nowhere"
        dns = "answers DNS" if st.answering.get(v.address) else "does NOT answer DNS"
        click.echo(f"{v.name} {v.address}: on {on} (prefers {v.prefer[0]}); {dns} from the client")
    for f in st.state.failed:
        click.echo(f"failed action: {f}")
    click.echo("--- pcs status ---")
    click.echo(st.pcs_status)


@lab.command(name="drill")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(list(lab_mod.SCENARIOS)),
              help="Run these (repeatable); default: every drill but the formation-powercut ones (each forms the "
                   "cluster anew from new cards: `-<moment>` cuts the first node's power as it begins that step, "
                   "without one at a random step).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {scenario, vip, outage_s, recovered, glibc_*} (glibc: the clients').")
@click.option("--compare-seed", is_flag=True,
              help="Also run every drill with the seed's settings (examples/seed.yaml), side by side.")
@click.pass_context
def drill(ctx: click.Context, scenarios: tuple[str, ...], as_json: bool, compare_seed: bool) -> None:
    """Failover drills from a healthy cluster: the outage every VIP saw (raw queries every 100 ms), and the worst,
    slow (over 1 s) and failed lookups of two glibc clients (glibc's defaults; `pibuild clients`'s options)."""
    the_lab = _lab(ctx)
    lab_mod.require_up(the_lab)
    settings = [lab_mod.settings_of(the_lab.cluster)] + ([lab_mod.seed_settings()] if compare_seed else [])
    rows = lab_mod.drill(the_lab, list(scenarios or lab_mod.DEFAULT_SCENARIOS), settings)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(lab_mod.table(rows, [s.name for s in settings]))
        click.echo(lookups.client_table(rows))
        if rejoins := lab_mod.rejoin_table(rows):
            click.echo(rejoins)
    if not all(r["recovered"] for r in rows):
        raise PibuildError("a VIP did not recover (see the table)")
