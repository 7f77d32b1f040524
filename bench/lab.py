"""Failover outage, pibuild's defaults against the seed's settings, in the QEMU lab; and how long `lab up` takes.

    python3 bench/lab.py --images DIR [--config CLUSTER.yaml] [--scenario named-stop ...] [--no-seed] [--keep]

DIR holds the images of the config's nodes (`pibuild -c CONFIG all -o DIR`); the config defaults to the bundled
example (armhf); tests/configs/arm64.yaml is the image tier's 64-bit cluster. The lab boots them (`pibuild lab
up`, timed), then `pibuild lab drill --compare-seed` runs every drill twice on the running cluster: with
pibuild's own defaults (the config without its reaction keys) and with the seed's, which `lab drill` takes from
examples/seed.yaml (--no-seed skips them). Prints the machine, both settings, the lab-up time and the outage per
scenario and VIP; the JSON goes to bench/lab-results-ARCH.json. `lab down` at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder import config as config_mod  # noqa: E402
from builder.lab import REACTION_KEYS, rejoin_table, seed_settings, settings_of  # noqa: E402
from builder.lookups import client_table  # noqa: E402


def machine(arch: str) -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs, {model}, guests under TCG ({arch} on {platform.machine()}), load {load:.1f}"


def defaults_config(source: Path, workdir: Path) -> tuple[Path, str]:
    """The config without its reaction keys: pibuild's defaults. Returns it and its arch."""
    data = yaml.safe_load(source.read_text())
    for key in REACTION_KEYS:
        data.get("pacemaker", {}).pop(key, None)
    secrets = data.get("secrets", {}).get("hacluster_password_file")
    if secrets and not Path(secrets).is_absolute():  # the images were built with the one beside the config
        data["secrets"]["hacluster_password_file"] = str((source.parent / secrets).resolve())
    path = workdir / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data["base"]["arch"]


def pibuild(*args: str, cwd: Path, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder.cli", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE if capture else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--config", type=Path, default=REPO / "examples" / "cluster.yaml")
    p.add_argument("--no-seed", action="store_true", help="drill with pibuild's defaults only")
    p.add_argument("--scenario", action="append", default=[])
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--no-up", action="store_true", help="the lab is up already")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, arch = defaults_config(args.config.resolve(), work)
        described = [f"pibuild defaults: {settings_of(config_mod.load(config)).describe()}"]
        if not args.no_seed:
            described.append(f"seed settings: {seed_settings().describe()} (examples/seed.yaml)")
        up_s = None
        try:
            if not args.no_up:
                start = time.monotonic()
                if pibuild("-c", str(config), "lab", "up", "--images", str(args.images.resolve()), cwd=work).returncode:
                    return 1
                up_s = time.monotonic() - start
            drill = ["-c", str(config), "lab", "drill", "--json", *([] if args.no_seed else ["--compare-seed"])]
            for s in args.scenario:
                drill += ["--scenario", s]
            proc = pibuild(*drill, cwd=work, capture=True)
            # Exit 1 with the JSON printed means a VIP did not recover: its row is shown as such.
            rows = json.loads(proc.stdout) if proc.stdout.strip() else []
        finally:
            if not args.keep:
                pibuild("-c", str(config), "lab", "down", cwd=work)
    print(f"machine: {machine(arch)}")
    if up_s is not None:
        print(f"lab up (boot, firstboot forms the cluster, every VIP answers): {up_s:.0f} s")
    for line in described:
        print(line)
    print(f"{'scenario':<15}{'vip':<17}{'pibuild defaults':>18}{'seed settings':>15}")
    for scenario, vip in dict.fromkeys((r["scenario"], r["vip"]) for r in rows):
        cells = []
        for settings in ("config", "seed"):
            r = next((r for r in rows if (r["scenario"], r["vip"], r["settings"]) == (scenario, vip, settings)), None)
            cell = "-" if r is None else f"{r['outage_s']:.1f} s"
            cells.append(cell if r is None or r["recovered"] else cell + " (NOT recovered)")
        print(f"{scenario:<15}{vip:<17}{cells[0]:>18}{cells[1]:>15}")
    print(client_table(rows))
    if rejoins := rejoin_table(rows):
        print(rejoins)  # node-replace: a new card's boot and rejoin, seconds from power-on
    result = {"machine": machine(arch), "config": str(args.config), "lab_up_s": up_s, "rows": rows,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (REPO / "bench" / f"lab-results-{arch}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if rows and all(r["recovered"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
