"""`pibuild smoke IMAGE`: each check's line as it is decided, then the verdict; builder.smoke does the work."""

from __future__ import annotations

from pathlib import Path

import click

from builder import smoke as smoke_mod
from builder.errors import PibuildError, UsageError


@click.command(name="smoke")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--timeout", type=float, default=None, metavar="S",
              help="Budget for the whole run in seconds, QEMU start to verdict (default 900 under TCG, 300 "
                   "with KVM, 1800 with --board).")
@click.option("--keep-log", is_flag=True, help="Keep the serial log also when every check passed.")
@click.option("--board", is_flag=True,
              help="Boot on QEMU's Raspberry Pi board for the node's model (pi2b: raspi2b; the Pi 3s and Zero 2 W: "
                   "raspi3b, or raspi2b when armhf) from an SD card larger than the image, with the model's device "
                   "tree and a USB NIC; also checks that the root partition grew. Slower than the default virt "
                   "machine.")
@click.option("--own-kernel", is_flag=True,
              help="With --board, armhf: boot the image's own armmp kernel, not its LPAE build (same version, as "
                   "the lab boots under TCG); several times slower.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the serial log goes (default: the temporary directory).")
def smoke(image: Path, timeout: float | None, keep_log: bool, board: bool, own_kernel: bool,
          log_dir: Path | None) -> None:
    """Boot IMAGE (.img or .img.xz) in QEMU (never changing it), log in on its serial console, check; exit 0 or 1."""
    if own_kernel and not board:
        raise UsageError("--own-kernel applies with --board only (without it every image boots its own kernel)")
    report = smoke_mod.smoke(image, timeout=timeout, log_dir=log_dir, keep_log=keep_log, board=board,
                             own_kernel=own_kernel, emit=lambda check: click.echo(check.line()))
    timing = (f"boot {report.boot_seconds:.1f} s to the login prompt, " if report.boot_seconds is not None else "")
    timing += (f"checks done {report.checks_seconds:.1f} s after QEMU started, "
               f"verdict after {report.total_seconds:.1f} s ({report.accel.upper()})")
    if report.ok:
        click.echo(f"smoke: PASS: {timing}" + (f"; serial log {report.serial_log}" if keep_log else ""))
        return
    raise PibuildError(f"smoke: FAIL: {', '.join(report.failed)} ({timing}); serial log: {report.serial_log}")
