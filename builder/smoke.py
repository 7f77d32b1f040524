"""`pibuild smoke IMAGE`: boot a node image in QEMU, log in on its serial console and check that it works.

The image is never written (builder.qemu boots a throw-away qcow2 overlay). Each check is printed PASS/FAIL with
its detail as soon as it is decided; the verdict names the failed checks and keeps the serial log.

Checks (see README "Smoke test"): boot (the login prompt appears), login (a root shell on the serial console),
hostname, address (the node's static address on its interface), named (active and answering
`dig @127.0.0.1 localhost`), pcsd (active), firstboot (pibuild-firstboot.service present and waiting for its
peers: a lone node cannot form the cluster), failed-units (`systemctl --failed` empty once the boot finished).

`--board` boots the image on QEMU's board for its node's model (raspi2b, raspi3b) from the SD card, with the image's
initrd and kernel (armhf under TCG: the LPAE build of it, unless own_kernel) and the model's device tree, and adds
root-grown (the first boot grew the root partition and its ext4 to the end of the card, which is larger than the
image). BOARD_UNCHECKED is what the board cannot check.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder import compress, plan, progress, qemu
from builder.errors import NeedsRoot, PibuildError

# The whole run's default budget (QEMU start to verdict). Under TCG a bookworm node on an idle 2-core machine has
# its login prompt at ~35 s and every unit up at ~75 s; the budget leaves room for a busy CI machine.
DEFAULT_TIMEOUT = {"tcg": 900.0, "kvm": 300.0}
# A board emulates the SoC's devices (the SD card's controller most of all), always under TCG: several times
# slower.
BOARD_TIMEOUT = 1800.0
# How long one check keeps polling for its condition once the boot finished (a bounded part of the budget).
# pcsd's from the end of the wait for the boot, which ends early when a unit failed (pcsd may not have started).
POLL_LIMIT = {"address": 60.0, "named": 60.0, "pcsd": 300.0}
CHECKS = ("boot", "login", "hostname", "address", "named", "pcsd", "firstboot", "failed-units")
BOARD_CHECKS = ("boot", "login", "hostname", "root-grown", "address", "named", "pcsd", "firstboot", "failed-units")
BOARD_UNCHECKED = ("the GPU firmware and config.txt (QEMU loads the kernel, initrd and device tree itself), the Pi's "
                   "own LAN chip (a USB network gadget stands in for it), Wi-Fi and Bluetooth")
# Slack at the end of the card that growpart may leave (its alignment), in 512-byte sectors.
GROWN_SLACK_SECTORS = 2048
# Prints the sizes check_root_grown judges, in 512-byte sectors.
GROWN_SCRIPT = """root=$(findmnt -n -o SOURCE /); part=${root#/dev/}; disk=$(lsblk -n -o PKNAME "$root")
echo "part=$part disk=$disk disk_size=$(cat /sys/class/block/$disk/size) start=$(cat /sys/class/block/$part/start)" \
  "part_size=$(cat /sys/class/block/$part/size) fs_size=$(df -B512 --output=size / | tail -n 1 | tr -d ' ')"
systemctl show -p ActiveState -p Result pibuild-expand-rootfs.service"""
FIRSTBOOT_UNIT = "pibuild-firstboot.service"
# Runs in the guest: polls until the boot's job queue is empty, or a unit failed or waits to be restarted after a
# failure. Prints state=<systemctl is-system-running> last.
SETTLE_SCRIPT = """while :; do
  state=$(systemctl is-system-running)
  case "$state" in initializing|starting) ;; *) echo "state=$state"; exit 0 ;; esac
  failing=$(systemctl list-units --state=failed,auto-restart --plain --no-legend --no-pager | cut -d' ' -f1)
  if [ -n "$failing" ]; then echo "failing:" $failing; echo "state=$state"; exit 0; fi
  sleep 3
done"""


@dataclass
class Check:
    name: str
    ok: bool | None             # None: skipped (an earlier check already failed the run; waiting would only cost time)
    detail: str
    at: float | None = None     # seconds after QEMU started when it was decided

    def line(self) -> str:
        at = f"{self.at:6.1f}s" if self.at is not None else " " * 7
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{word}  {self.name:<13} {at}  {self.detail}"


@dataclass
class SmokeReport:
    image: Path
    serial_log: Path
    mode: str = ""
    machine: str = ""
    arch: str = ""
    expected: tuple[str, ...] = CHECKS
    accel: str = ""
    checks: list[Check] = field(default_factory=list)
    boot_seconds: float | None = None      # QEMU start -> login prompt
    checks_seconds: float | None = None    # QEMU start -> every check decided
    total_seconds: float = 0.0             # the command's whole run (overlay set-up and teardown included)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is True for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.ok is False]


class _Run:
    """One smoke run against a started VM: the checks in order, each within the run's deadline."""

    def __init__(self, vm: qemu.Vm, report: SmokeReport, deadline: float, emit: Callable[[Check], None]):
        self.vm = vm
        self.console = vm.console
        self.report = report
        self.deadline = deadline
        self.emit = emit

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, name: str, ok: bool | None, detail: str) -> bool | None:
        check = Check(name, ok, detail, self.vm.elapsed())
        self.report.checks.append(check)
        self.emit(check)
        return ok

    def skip(self, name: str, state: str) -> None:
        """The verdict is FAIL already: a check that would only wait now is shown as it stands, not awaited."""
        self.add(name, None, f"{state}; not awaited: {', '.join(self.report.failed)} failed already")

    def sh(self, command: str, timeout: float = 120.0) -> tuple[int, str]:
        return self.console.run(command, timeout=max(1.0, min(timeout, self.left())))

    def poll(self, command: str, decide: Callable[[int, str], bool | None], limit: float) -> tuple[bool, str]:
        """Run command until decide() says True (pass) or False (definitely failed), or the time is up.

        Returns the verdict and the last output the command gave (a slow console is waited for, not judged).
        """
        until = min(self.deadline, time.monotonic() + limit)
        out, pause = "", 2.0
        while True:
            try:
                rc, out = self.sh(command, timeout=max(30.0, until - time.monotonic()))
            except qemu.ConsoleTimeout:
                if time.monotonic() >= until:
                    return False, out
                continue
            verdict = decide(rc, out)
            if verdict is not None:
                return verdict, out
            if time.monotonic() + pause >= until:
                return False, out
            # Backing off: every command costs the emulated guest CPU time that the thing waited for needs.
            time.sleep(pause)
            pause = min(pause * 1.5, 10.0)

    # ---- the checks --------------------------------------------------------------------------------------------

    def all(self) -> None:
        node = self.vm.node
        try:
            self.console.wait_login_prompt(self.left())
        except qemu.ConsoleError as exc:
            self.add("boot", False, str(exc))
            return
        self.report.boot_seconds = self.vm.elapsed()
        self.add("boot", True, f"login prompt after {self.report.boot_seconds:.1f} s")
        try:
            self.console.login(min(120.0, self.left()))
        except qemu.ConsoleError as exc:
            self.add("login", False, str(exc))
            return
        self.add("login", True, f"root shell on {self.vm.boot.console} (autologin set up in the overlay only)")

        rc, out = self.sh("hostname")
        self.add("hostname", out.strip() == node.name,
                 out.strip() if out.strip() == node.name else f"{out.strip()!r}, expected {node.name!r}")
        if "root-grown" in self.report.expected:
            self.check_root_grown()

        # Everything after this waits for the boot to finish (pcsd alone takes ~25 s under TCG).
        self.settle()

        self.check_address(node)
        self.check_named()
        self.check_pcsd()
        self.check_firstboot(node)
        self.check_failed_units()

    def settle(self) -> str:
        """Wait until systemd's boot job queue is empty or a unit has failed, bounded; returns the system state.

        Not `is-system-running --wait` alone: a unit that fails and restarts (BIND with a broken configuration)
        keeps the queue from ever emptying, and the run would wait out its whole budget before saying so."""
        limit = int(max(5, self.left() - 60))
        rc, out = self.sh(f"timeout {limit} sh -c {shlex.quote(SETTLE_SCRIPT)}", timeout=limit + 30)
        states = [w.removeprefix("state=") for w in out.split() if w.startswith("state=")]
        return states[-1] if states else "unknown"

    def check_root_grown(self) -> None:
        """pibuild-expand-rootfs (before sysinit.target, so done by the login) grew the root partition to the end of
        the card and the ext4 to the partition."""
        _, out = self.sh(GROWN_SCRIPT)
        props = dict(word.split("=", 1) for word in out.split() if "=" in word)
        try:
            disk, start, part, fs = (int(props[k]) for k in ("disk_size", "start", "part_size", "fs_size"))
        except (KeyError, ValueError):
            self.add("root-grown", False, f"could not read the sizes: {_last_lines(out)}")
            return
        mib = lambda sectors: f"{sectors * 512 >> 20} MiB"  # noqa: E731
        image_root = self.vm.layout.root_size // 512
        detail = (f"/dev/{props.get('part')}: {mib(image_root)} in the image, now {mib(part)} ending "
                  f"{mib(disk - start - part)} before the end of the {mib(disk)} card; ext4 {mib(fs)}; "
                  f"pibuild-expand-rootfs {props.get('ActiveState', '?')} ({props.get('Result', '?')})")
        grown = part > image_root and start + part >= disk - GROWN_SLACK_SECTORS and fs > image_root
        self.add("root-grown", grown and props.get("Result") == "success", detail)

    def check_address(self, node: qemu.Node) -> None:
        if not node.address:
            self.add("address", False, "the image configures no static address (no NetworkManager keyfile with "
                                        "address1=, no `static ip_address=` in dhcpcd.conf)")
            return
        iface = node.interface or "eth0"
        want = f"inet {node.address} "
        ok, out = self.poll(f"ip -4 -o addr show dev {iface}", lambda rc, out: True if want in out else None,
                            POLL_LIMIT["address"])
        if ok:
            self.add("address", True, f"{node.address} on {iface}")
            return
        found = " ".join(w for line in out.splitlines() for w in line.split()[3:4] if "/" in w)
        if not found:
            found = f"no {iface} at all" if "does not exist" in out else out.strip()[:200] or "none"
        self.sh("ip -o link; nmcli -t device status 2>/dev/null; journalctl -b -u NetworkManager -n 20 --no-pager")
        self.add("address", False, f"{node.address} is not on {iface} (found: {found})")

    def check_named(self) -> None:
        def decide(rc: int, out: str) -> bool | None:
            props = _props(out)
            if props.get("ActiveState") == "active":
                return True
            if props.get("ActiveState") == "failed" or int(props.get("NRestarts", "0") or 0) > 0:
                return False  # it failed at least once (Restart=on-failure keeps it cycling)
            return None

        ok, out = self.poll("systemctl show -p ActiveState -p SubState -p NRestarts -p Result named", decide,
                            POLL_LIMIT["named"])
        props = _props(out)
        if not ok:
            _, journal = self.sh("journalctl -b -u named -n 40 --no-pager -o cat")
            # BIND names the file and line of a configuration error: that is the line to show.
            errors = [line for line in journal.splitlines() if re.search(r"\.conf[\w.-]*:\d+:", line)]
            self.add("named", False, f"named.service is {props.get('ActiveState', '?')} "
                                     f"({props.get('SubState', '?')}, result {props.get('Result', '?')}, "
                                     f"{props.get('NRestarts', '?')} restart(s)): "
                                     f"{' | '.join(errors[:2]) if errors else _last_lines(journal)}")
            return
        ok, answer = self.poll("dig +short +time=2 +tries=1 @127.0.0.1 localhost",
                               lambda rc, out: True if "127.0.0.1" in out.split() else None, POLL_LIMIT["named"])
        if ok:
            self.add("named", True, "active; dig @127.0.0.1 localhost -> 127.0.0.1")
        else:
            self.add("named", False, f"active, but dig @127.0.0.1 localhost answered {_last_lines(answer)!r}")

    def check_pcsd(self) -> None:
        # Its start job may still wait in the queue (the wait for the boot ends early once a unit failed): inactive
        # with a job is not yet started, not failed.
        command = "systemctl is-active pcsd; systemctl list-jobs --no-legend pcsd.service"
        if self.report.failed:
            # Judged as it is now, not waited for (a BIND restarting in a loop slows pcsd's start to minutes).
            _, out = self.sh(command)
            if _active(0, out) is None:
                self.skip("pcsd", f"pcsd.service {_unit_state(out)[0]}")
                return
        ok, out = self.poll(command, _active, POLL_LIMIT["pcsd"])
        if ok:
            self.add("pcsd", True, "active")
            return
        _, journal = self.sh("journalctl -b -u pcsd -n 20 --no-pager -o short-monotonic")
        state, queued = _unit_state(out)
        self.add("pcsd", False, f"pcsd.service is {state}{' (its start still queued)' if queued else ''}: "
                                f"{_last_lines(journal)}")

    def check_firstboot(self, node: qemu.Node) -> None:
        if node.plan is None:
            self.add("firstboot", False, "/etc/pibuild/firstboot.json is missing: not a pibuild node image")
            return
        if self.report.failed:
            # A lone node reaches its wait for a peer only once its own corosync and pacemaker run: minutes under
            # TCG that would not change the verdict.
            props = _props(self.sh(f"systemctl show -p ActiveState -p SubState {FIRSTBOOT_UNIT}")[1])
            self.skip("firstboot", f"{FIRSTBOOT_UNIT} {props.get('ActiveState', '?')} "
                                   f"({props.get('SubState', '?')}), its wait for a peer")
            return
        # Wait in the guest, for free: `journalctl -f` is woken by new entries, and awk stops at the first line that
        # says the script waits for a peer (a lone node never gets further; the waits for its own pcsd, corosync.conf
        # or pacemaker come before it). Failed passes are printed on the way.
        # Process substitution: the shell does not wait for journalctl, which `timeout` ends.
        limit = int(max(10.0, self.left() - 45))
        _, journal = self.sh(
            f"awk {shlex.quote(firstboot_awk(node.plan))} "
            f"< <(timeout {limit} journalctl -b -u {FIRSTBOOT_UNIT} -o cat -n all -f)", timeout=limit + 30)
        _, out = self.sh(f"systemctl show -p LoadState -p ActiveState -p SubState {FIRSTBOOT_UNIT}; "
                         f"test -e {plan.DONE_PATH} && echo Done=yes")
        props, lines = _props(out), _firstboot_lines(journal)
        state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
        failures = [line for line in lines if line.startswith("failed:")]
        waiting = lines and lines[-1].startswith("waiting")
        if props.get("LoadState", "loaded") != "loaded":
            self.add("firstboot", False, f"{FIRSTBOOT_UNIT} is {props['LoadState']}")
        elif props.get("Done") == "yes":
            self.add("firstboot", False, f"{plan.DONE_PATH} exists on a lone node: the image was not fresh")
        elif waiting and props.get("ActiveState") in ("active", "activating"):
            retried = f" (after {len(failures)} failed pass(es); first: {failures[0]})" if failures else ""
            self.add("firstboot", True, f"{FIRSTBOOT_UNIT} {state}: {lines[-1]}{retried}")
        else:
            _, last = self.sh(f"journalctl -b -u {FIRSTBOOT_UNIT} -o cat -n 3 --no-pager")
            self.add("firstboot", False, f"{FIRSTBOOT_UNIT} {state}, not waiting for its peers within {limit} s; "
                                         f"last log lines: {_last_lines(last)}")

    def check_failed_units(self) -> None:
        rc, out = self.sh("systemctl is-system-running; systemctl --failed --no-legend --plain --no-pager")
        lines = out.splitlines()
        state = lines[0].strip() if lines else "unknown"
        units = [line.split()[0] for line in lines[1:] if "." in line.split(" ", 1)[0]]
        if not units:
            self.add("failed-units", True, f"none (system {state})")
            return
        # Their journals go to the serial log for whoever reads it.
        self.sh("; ".join(f"journalctl -b -u {u} -n 15 --no-pager -o short-monotonic" for u in units[:5]),
                timeout=120)
        self.add("failed-units", False, f"{', '.join(units)} (system {state})")


def _props(out: str) -> dict[str, str]:
    """KEY=VALUE lines (systemctl show, our own marks)."""
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and " " not in line)


def firstboot_awk(plan: dict) -> str:
    """An awk program over firstboot's journal: print each failed pass, and stop at the first wait for a peer.
    Node names are hostnames: letters, digits and hyphens, nothing a regex treats specially."""
    peers = "|".join(n["name"] for n in plan["nodes"] if n["name"] != plan["node"])
    return f"/^failed:/ {{print; fflush()}} /^waiting for ({peers})[ ,]/ {{print; exit}}"


def _firstboot_lines(out: str) -> list[str]:
    """firstboot's failure lines and its wait for a peer, as the awk in check_firstboot printed them."""
    return [line for line in out.splitlines() if line.startswith(("failed:", "waiting for "))]


def _unit_state(out: str) -> tuple[str, bool]:
    """`systemctl is-active UNIT; systemctl list-jobs --no-legend UNIT` -> (its state, a job of it queued)."""
    lines = [line.strip() for line in out.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "unknown"), any(".service" in line for line in lines[1:])


def _active(rc: int, out: str) -> bool | None:
    """Output as _unit_state reads it: decided, or None to wait."""
    state, queued = _unit_state(out)
    if state == "active":
        return True
    if state == "failed" or (state == "inactive" and not queued):
        return False
    return None  # activating, reloading, deactivating, or inactive with its start job queued: wait


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def smoke(image: Path, *, timeout: float | None = None, log_dir: Path | None = None, keep_log: bool = False,
          cpus: int = 1, emit: Callable[[Check], None] = lambda check: None,
          tcg_tuning: bool = True, board: bool = False, own_kernel: bool = False) -> SmokeReport:
    """Boot image in QEMU (never writing it) and run every check. The serial log is kept when a check failed or
    keep_log is set, and deleted otherwise. board: on QEMU's board for the node's model (see the module's text);
    an armhf image there boots the LPAE build of its kernel under TCG (as in the lab) unless own_kernel."""
    if os.geteuid() != 0:
        raise NeedsRoot("the smoke test (it mounts its QEMU overlay through FUSE and a loop device)")
    image = Path(image)
    if not image.is_file():
        raise PibuildError(f"{image}: no such image file")
    started = time.monotonic()
    log_dir = Path(log_dir or tempfile.gettempdir())
    log_dir.mkdir(parents=True, exist_ok=True)
    serial_log = log_dir / f"pibuild-smoke-{image.stem}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    report = SmokeReport(image=image, serial_log=serial_log, expected=BOARD_CHECKS if board else CHECKS)
    workdir = Path(tempfile.mkdtemp(prefix="pibuild-smoke-"))
    vm = None
    finished = False
    try:
        booted = image
        if image.name.endswith(".xz"):
            # Decompressed into the throw-away directory (holes for the zeros); the .img.xz itself is only read.
            progress.say(f"==> {image.name}: decompressing into {workdir}")
            booted = workdir / image.name.removesuffix(".xz")
            compress.decompress_sparse(image, booted)
        vm = qemu.Vm(booted, workdir, serial_log, name=f"smoke-{booted.stem}"[:60], cpus=cpus,
                     tcg_tuning=tcg_tuning, board=board, emulation_kernel=board and not own_kernel)
        vm.prepare()
        report.mode, report.machine, report.arch = vm.boot.mode, vm.boot.machine, vm.boot.arch
        report.accel = vm.accel_used
        budget = timeout or (BOARD_TIMEOUT if board else DEFAULT_TIMEOUT[report.accel])
        progress.say(f"==> {image.name}: {report.arch}, {vm.argv[0]} -M {report.machine} ({report.accel.upper()}), "
                     f"node {vm.node.name}; serial log {serial_log}")
        if board:
            model = vm.node.plan["model"]
            kernel = "the image's" if vm.boot.own_kernel else "the LPAE build of the image's kernel,"
            progress.say(f"    {model} on {report.machine}: device tree {vm.boot.dtb}, {kernel} {vm.boot.kernel}, "
                         f"SD card of {vm.sd_card_size >> 20} MiB, console {vm.boot.console}; not checked here: "
                         f"{BOARD_UNCHECKED}")
        vm.start()
        run = _Run(vm, report, vm.started_at + budget, emit)
        try:
            with progress.phase(f"{image.name}: boot and checks"):
                run.all()
        except qemu.ConsoleError as exc:
            # The console stopped answering mid-way: the check being run fails with the reason.
            done = {c.name for c in report.checks}
            name = next(n for n in report.expected if n not in done)
            run.add(name, False, str(exc))
        report.checks_seconds = vm.elapsed()
        for name in report.expected:
            if name not in {c.name for c in report.checks}:
                run.add(name, False, "not run (an earlier check failed or the time ran out)")
        finished = True
    finally:
        if vm is not None:
            vm.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        report.total_seconds = time.monotonic() - started
        if not keep_log and (report.ok or not finished):
            with contextlib.suppress(OSError):
                serial_log.unlink()
    return report
