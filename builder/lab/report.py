"""The drills' results side by side: one line per scenario and VIP, an outage column per settings."""

from __future__ import annotations


def table(rows: list[dict], settings: list[str]) -> str:
    head = f"{'scenario':<15}{'vip':<17}" + "".join(f"{s + ' outage':>16}{'recovered':>11}" for s in settings)
    lines = [head, "-" * len(head)]
    keys = list(dict.fromkeys((r["scenario"], r["vip"]) for r in rows))
    for scenario, vip in keys:
        line = f"{scenario:<15}{vip:<17}"
        for s in settings:
            r = next((r for r in rows if (r["scenario"], r["vip"], r["settings"]) == (scenario, vip, s)), None)
            line += f"{r['outage_s']:>15.1f}s{'yes' if r['recovered'] else 'NO':>11}" if r else f"{'-':>16}{'':>11}"
        lines.append(line)
    # A failure after a drill's failback was cleaned up again (Drill.heal): not hidden, since it means a resource
    # agent missed its monitor deadline on a healthy cluster.
    # Likewise a failure once a formation-powercut drill's cluster formed (FormationPowercut).
    for key, after, cleaned in (("failures_after_failback", "failback", "cleaned up again"),
                                ("failures_after_formation", "formation", "cleaned up")):
        late = {(r["scenario"], r["settings"]): r[key] for r in rows if r.get(key)}
        for (scenario, s), failures in late.items():
            lines.append(f"after {scenario}'s {after} ({s}), {cleaned}: {', '.join(failures)}")
    return "\n".join(lines)


def rejoin_table(rows: list[dict]) -> str:
    """The node-replace drill's own figures, one line per settings: a new card's boot, its rejoin (seconds from
    power-on), its VIP coming home by itself, and what the glibc clients felt meanwhile. Empty without such rows."""
    lines = []
    for r in {r["settings"]: r for r in rows if r["scenario"] == "node-replace"}.values():
        if not lines:
            lines.append(f"{'node-replace':<13}{'settings':<10}{'node':<10}{'boot':>7}{'online':>8}{'done':>8}"
                         f"{'VIP home':>10}{'glibc failed':>14}{'worst':>8}  secrets left")
        home = r["vip_home_after_rejoin_s"]
        failed = sum(r.get(f"rejoin_glibc_{c}_failed", 0) for c in ("defaults", "recommended"))
        worst = max((r.get(f"rejoin_glibc_{c}_worst_s", 0.0) for c in ("defaults", "recommended")), default=0.0)
        lines.append(f"{'':<13}{r['settings']:<10}{r['node']:<10}{_s(r['boot_s']):>7}{_s(r['rejoin_s']):>8}"
                     f"{_s(r['firstboot_done_s']):>8}{('+' + _s(home)) if home is not None else 'stayed':>10}"
                     f"{failed:>14}{worst:>7.2f}s  {', '.join(r['secrets_left_on_card']) or 'none'}")
    return "\n".join(lines)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"
