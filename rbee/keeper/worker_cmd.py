"""`rbee worker list|start|stop`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from rbee.contracts.jobs import JobCreate, JobKind
from rbee.contracts.spread_plans import BadSpread, is_spread, parse_spread
from rbee.keeper.context import App
from rbee.keeper.jobs_view import follow
from rbee.keeper.output import CLIError, table
from rbee.keeper.spread_view import plan_lines, plan_table

app = typer.Typer(help="List, start and stop workers (one loaded model each).", no_args_is_help=True)

STATE_STYLE = {"ready": "green", "starting": "yellow", "pending": "yellow",
               "draining": "yellow", "error": "red", "unreachable": "red", "stopped": "dim"}


def workers_table(workers: list[dict[str, object]]) -> Table:
    t = table("Workers", "ID", "MODEL", "HIVE", "DEVICE", "MODE", "STATE", "URL", "PID", "IN FLIGHT")
    for w in workers:
        style = STATE_STYLE.get(str(w["state"]), "")
        t.add_row(str(w["id"]), str(w["model"]), str(w["hive"]),
                  escape(str(w.get("offload") or w.get("device") or "cpu")), str(w["mode"]),  # a hive's words
                  f"[{style}]{w['state']}[/{style}]" if style else str(w["state"]),
                  str(w.get("url") or "-"), str(w.get("pid") or "-"),
                  f"{w['in_flight']}/{w['slots']}")
    return t


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every worker, its model, hive, state and load."""
    ctx = App()
    if ctx.running_queen() is None:
        raise CLIError("no queen is running, so no workers are (start one with `rbee infer` or `rbee queen start`)")
    workers = ctx.client.get("/v1/workers")
    if as_json:
        ctx.out.json(workers)
    elif not workers:
        ctx.out.info("no workers; `rbee infer -m MODEL` starts one")
    else:
        ctx.out.out.print(workers_table(workers))
        for w in workers:
            if w.get("error"):
                ctx.out.err.print(f"[red]{w['id']}[/red]: {w['error']}")


@app.command()
def start(
    model: Annotated[str, typer.Argument(help="A catalog name, a hub name or a path to a .gguf file.")],
    hive: Annotated[str, typer.Option("-a", "--hive", help="The hive to start it on.")] = "localhost",
    device: Annotated[str | None, typer.Option("--device", help="The device (cpu, cuda0, ...; `rbee hive list` "
                                               "shows them), or GPUs to spread the model over (cuda0+cuda1); "
                                               "default: the first GPU with room, else GPUs together, else the "
                                               "CPU; devices of several hives: HIVE:DEV+HIVE:DEV.")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print where the model would go across hives "
                                          "(devices, shares, links) and start nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as JSON.")] = False,
) -> None:
    """Start one more worker for a model now (requests also start them on demand)."""
    ctx = App()
    spread = is_spread(device)
    if spread:
        try:
            parse_spread(device or "")
        except BadSpread as exc:
            raise CLIError(f"--device: {exc}") from None
    client = ctx.queen()
    if dry_run:
        plan = client.post("/v1/spreads/plan", json={"model": model, "spread": device if spread else None})
        _show_plan(ctx, plan, as_json)
        return
    job = client.post("/v1/jobs", json=JobCreate(kind=JobKind.WORKER_SPAWN, hive=None if spread else hive, model=model,
                                                     device=device)
                      .model_dump(mode="json"))
    done = follow(client, job["job_id"], ctx.out, f"worker for {model} on {device if spread else hive}")
    info = done.data or {}
    where = info.get("offload") if spread else f"{info.get('hive')}:{info.get('device')}"
    ctx.out.success(f"{info.get('id')} serves {info.get('model')} on {where}")


def _show_plan(ctx: App, plan: dict[str, Any], as_json: bool) -> None:
    if as_json:
        ctx.out.json(plan)
        return
    if plan["devices"]:
        ctx.out.out.print(plan_table(plan))
    for line in plan_lines(plan):
        ctx.out.out.print(line, markup=False)


@app.command()
def stop(worker_id: Annotated[str, typer.Argument(help="The worker's id, from `rbee worker list`.")]) -> None:
    """Stop one worker now (its model is unloaded)."""
    ctx = App()
    if ctx.running_queen() is None:
        raise CLIError("no queen is running, so no workers are")
    info = ctx.client.delete(f"/v1/workers/{worker_id}")
    ctx.out.success(f"stopped {info['id']} ({info['model']})")
