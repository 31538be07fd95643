"""`rbee status`: the queen, hives, workers and models, as one readable report."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from rbee.keeper.context import App
from rbee.keeper.output import CLIError, human_bytes, table
from rbee.keeper.spread_view import links_table
from rbee.keeper.watch import devices_table
from rbee.keeper.watch import watch as watch_colony
from rbee.keeper.worker_cmd import workers_table


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="A live view: hives, memory, workers, queue, "
                                        "tokens/s, redrawn until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between redraws with --watch.", min=0.2)] = 1.0,
    count: Annotated[int | None, typer.Option(help="With --watch: stop after this many redraws.", min=1)] = None,
    links: Annotated[bool, typer.Option("--links", help="Only the links between hives: measure the pairs with "
                                        "no fresh measure, then show round trips and bandwidth.")] = False,
) -> None:
    """Show the queen, its hives, the workers with their state, and the known models."""
    ctx = App()
    if links:
        _links(ctx, as_json)
        return
    if watch:
        if ctx.running_queen() is None:
            raise CLIError(f"no queen is running at {ctx.queen_url}; `rbee queen start` starts one")
        watch_colony(ctx.client, ctx.out, interval, count)
        return
    if ctx.running_queen() is None:
        if as_json:
            ctx.out.json({"queen": None})
        else:
            ctx.out.out.print(f"queen: [red]not running[/red] ({ctx.queen_url}); "
                              "`rbee queen start` or any `rbee infer` starts it")
        raise typer.Exit(1)
    report = ctx.client.get("/v1/status")
    if as_json:
        ctx.out.json(report)
        return
    queen = report["queen"]
    uptime = int(time.time() - queen["started_at"])
    ctx.out.out.print(f"[bold]queen[/bold] {ctx.queen_url}  v{queen['version']}  pid {queen['pid']}  "
                      f"up {uptime // 3600}h{uptime % 3600 // 60:02d}m{uptime % 60:02d}s")
    hives = table("Hives", "ALIAS", "STATE", "ADDRESS", "VERSION", "ENGINE")
    for h in report["hives"]:
        engine = h["engine"]
        engine_text = f"[red]{engine['problem']}[/red]" if engine.get("problem") else \
            f"{engine.get('version') or '?'} ({engine['source']})"
        hives.add_row(h["alias"], f"[green]{h['state']}[/green]", h["address"], h["version"], engine_text)
    ctx.out.out.print(hives)
    ctx.out.out.print(devices_table(ctx.client.get("/v1/hives"), report["workers"]))
    if report["workers"]:
        ctx.out.out.print(workers_table(report["workers"]))
    else:
        ctx.out.out.print("[dim]Workers: none loaded[/dim]")
    loaded = {w["model"] for w in report["workers"] if w["state"] == "ready"}
    models = table("Models", "NAME", "SIZE", "ARCH", "LOADED", "PATH")
    for m in report["models"]:
        path = f"[red]missing: {m['path']}[/red]" if m["missing"] else m["path"]
        models.add_row(m["name"], human_bytes(m["size_bytes"]), m.get("architecture") or "?",
                       "yes" if m["name"] in loaded else "", path)
    ctx.out.out.print(models if report["models"] else "[dim]Models: none yet[/dim]")


def _links(ctx: App, as_json: bool) -> None:
    if ctx.running_queen() is None:
        raise CLIError(f"no queen is running at {ctx.queen_url}; `rbee queen start` starts one")
    found = ctx.client.post("/v1/links/measure", json={})
    if as_json:
        ctx.out.json(found)
        return
    if found["links"]:
        ctx.out.out.print(links_table(found["links"]))
    else:
        ctx.out.info("no links measured: a link joins two ready hives (`rbee hive list` shows them)")
    for failure in found["failures"]:
        ctx.out.warn(f"not measured: {failure}")
