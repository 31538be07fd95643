"""How the CLI shows a spread plan (`rbee worker start MODEL --dry-run`) and the links between hives
(`rbee status --links`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from rbee.keeper.output import human_bytes, table


def links_table(links: list[dict[str, Any]]) -> Table:
    t = table("Links", "FROM", "TO", "RTT MEDIAN", "RTT P90", "MB/S", "MEASURED")
    for m in links:
        t.add_row(str(m["source"]), str(m["peer"]), f"{m['rtt_ms_median']:.3f} ms", f"{m['rtt_ms_p90']:.3f} ms",
                  f"{m['mbps']:.1f}", f"{m['bulk_bytes'] // 1024} KiB, {m['rounds']} rounds")
    return t


def plan_table(plan: dict[str, Any]) -> Table:
    """The devices of a spread in llama-server's order (RPC first), each one's room and share of the layers."""
    t = table(f"Spread of {plan['model']} (needs {human_bytes(plan['need'])})", "ORDER", "HIVE", "DEVICE",
              "ROLE", "ROOM", "SHARE")
    for d in plan["devices"]:
        role = "helper (rpc)" if d["rpc"] else "main"
        order = "cpu (not offloaded)" if d["order"] is None else str(d["order"])
        t.add_row(order, str(d["hive"]), str(d["device"]), role, human_bytes(d["room"]), f"{d['share'] * 100:.1f} %")
    return t


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """What the table does not say: the verdict, the llama-server flags, the links used and refused."""
    lines = [str(plan["reason"])]
    if plan["spread"]:
        lines.append("--tensor-split " + ",".join(f"{s:g}" for s in plan["tensor_split"]) +
                     (f"  (the main hive's CPU keeps {plan['main_cpu_share'] * 100:.1f} % of the layers)"
                      if plan["main_cpu_share"] else ""))
    for m in plan["links"]:
        lines.append(f"link {m['source']} - {m['peer']}: {m['rtt_ms_median']:.2f} ms median round trip, "
                     f"{m['mbps']:.1f} MB/s")
    for r in plan["refused"]:
        lines.append(f"refused {r['hive']}: {r['reason']}")
    return lines
