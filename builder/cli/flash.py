"""`pibuild flash IMAGE DEVICE`: the confirmation prompt and the one-line report; builder.flash does the work."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from builder import flash as flash_mod
from builder.errors import UsageError


def _confirm(prompt: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("no terminal to confirm on: pass --yes to write without asking")
    try:
        return click.confirm(prompt, default=False, err=True)
    except click.Abort:
        return False


@click.command("flash")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("device")
@click.option("--yes", "-y", is_flag=True, help="Write without asking for confirmation.")
@click.option("--force", is_flag=True,
              help="Allow a device that is not removable, or a regular file, as DEVICE. "
                   "Never allows a disk the running system uses.")
def flash(image: Path, device: str, yes: bool, force: bool) -> None:
    """Write IMAGE (.img or .img.xz) to the SD card DEVICE, only the blocks it uses, and verify it.

    Refuses, with nothing written, a disk the running system uses, a partition, a read-only or too small device,
    and (without --force) a device that is not removable. Checks IMAGE.sha256 first and reads the card back after.
    """
    report = flash_mod.flash(image, device, yes=yes, force=force, confirm=_confirm)
    human = flash_mod.human
    written = "" if report.bytes_written is None else f", {human(report.bytes_written)} written"
    click.echo(f"flashed {report.image.name} to {report.device}: {human(report.image_size)} image, "
               f"{human(report.mapped_bytes)} mapped ({report.method}){written} in {report.write_seconds:.1f} s; "
               f"verified {human(report.verified_bytes)} read back in {report.verify_seconds:.1f} s; "
               f"sha256 {report.sha256}")
