"""`rbee status --watch`: a live view of the colony, redrawn from the queen's /v1/status, /v1/hives and
/metrics."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rbee.keeper.client import QueenClient
from rbee.keeper.output import Output, human_bytes, table
from rbee.keeper.worker_cmd import workers_table

BAR_WIDTH = 20
Samples = dict[str, list[tuple[dict[str, str], float]]]


def _metrics(client: QueenClient) -> Samples:
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(client.get_text("/metrics")):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def _sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == want for k, want in labels.items()))


def bar(used: float, total: float, width: int = BAR_WIDTH) -> Text:
    """`█████░░░░░ 2.1 GB / 16.0 GB`, red from 90 % on."""
    share = 0.0 if total <= 0 else min(1.0, used / total)
    filled = round(share * width)
    style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {human_bytes(used)} / {human_bytes(total)}")
    return text


def _held(worker: dict[str, Any]) -> dict[str, int]:
    """Memory a worker holds per device (a queen older than spread workers sends only `device`)."""
    return worker.get("device_memory") or {worker.get("device") or "cpu": int(worker.get("memory_bytes") or 0)}


def held_on(worker: dict[str, Any], hive: str) -> dict[str, int]:
    """Memory a worker holds per device of `hive`: on its own hive, what it holds; a spread across hives'
    worker also holds its share on each helper's device (its `parts`)."""
    if worker["hive"] == hive:
        return _held(worker)
    return {p["device"]: int(p["memory_bytes"]) for p in worker.get("parts") or [] if p["hive"] == hive}


def devices_table(hives: list[dict[str, Any]], workers: list[dict[str, Any]]) -> Table:
    """Hives and their devices: memory held by workers (bars) and which workers run on each."""
    t = table("Hives and devices", "HIVE", "STATE", "DEVICE", "MEMORY (workers / total)", "LIVE", "WORKERS")
    for h in hives:
        devices = h.get("devices") or [{"id": "-", "name": "(not registered)", "total_bytes": 0}]
        for i, d in enumerate(devices):
            on = [w for w in workers if d["id"] in held_on(w, h["alias"]) and w["state"] not in ("stopped", "error")]
            used = sum(held_on(w, h["alias"])[d["id"]] for w in on)
            live = []
            if d.get("free_bytes") is not None:
                live.append(f"{human_bytes(d['free_bytes'])} free")
            if d.get("utilization") is not None:
                live.append(f"{d['utilization']:.0f}% busy")
            if d.get("temperature_c") is not None:
                live.append(f"{d['temperature_c']:.0f}°C")
            name = Text(f"{d['id']}: {d['name']}")
            if d.get("failed"):
                name.append(f" FAILED: {d['failed']}", style="red")
            t.add_row(h["alias"] if i == 0 else "", h["state"] if i == 0 else "", name,
                      bar(used, int(d["total_bytes"])), ", ".join(live),
                      escape(", ".join(f"{w['id']} ({w['model']}" + (f": {w['offload']})" if w.get("offload") else ")")
                                       for w in on)) or "-")
    return t


def render(status: dict[str, Any], samples: Samples, rates: dict[str, float],
           hives: list[dict[str, Any]] | None = None) -> RenderableType:
    queen = status["queen"]
    uptime = int(time.time() - queen["started_at"])
    head = Text.from_markup(
        f"[bold]queen[/bold] v{queen['version']}  up {uptime // 3600}h{uptime % 3600 // 60:02d}m  "
        f"[bold]{rates.get('tokens', 0.0):.1f}[/bold] tokens/s  "
        f"[bold]{rates.get('requests', 0.0):.2f}[/bold] requests/s  "
        f"waiting: [bold]{int(_sum(samples, 'rbee_queue_depth'))}[/bold]")
    devices = devices_table(hives if hives is not None else status["hives"], status["workers"])
    queued = [(labels["model"], v) for labels, v in samples.get("rbee_queue_depth", []) if v > 0]
    parts: list[RenderableType] = [head, devices]
    parts.append(workers_table(status["workers"]) if status["workers"] else Text("Workers: none loaded", style="dim"))
    if queued:
        parts.append(Text("Waiting: " + ", ".join(f"{m} {int(n)}" for m, n in queued)))
    return Group(*parts)


def watch(client: QueenClient, out: Output, interval: float, count: int | None) -> None:
    """Redraw every `interval` seconds until Ctrl-C (or `count` redraws)."""
    previous: tuple[float, float, float] | None = None
    drawn = 0
    with Live(console=out.out, refresh_per_second=4, auto_refresh=False) as live:
        while count is None or drawn < count:
            status = client.get("/v1/status")
            hives = client.get("/v1/hives")
            samples = _metrics(client)
            now = time.monotonic()
            tokens = _sum(samples, "rbee_tokens_total", kind="completion")
            requests = _sum(samples, "rbee_requests_total")
            rates: dict[str, float] = {}
            if previous is not None and now > previous[0]:
                rates = {"tokens": (tokens - previous[1]) / (now - previous[0]),
                         "requests": (requests - previous[2]) / (now - previous[0])}
            previous = (now, tokens, requests)
            live.update(render(status, samples, rates, hives), refresh=True)
            drawn += 1
            if count is None or drawn < count:
                time.sleep(interval)
