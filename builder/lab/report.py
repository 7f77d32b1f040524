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
    return "\n".join(lines)
