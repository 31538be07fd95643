"""`rbee logs queen|hive ALIAS|worker ID [-n N] [-f]`: any part's log, wherever it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from rbee.common import paths
from rbee.common.logs import show
from rbee.keeper import hive_cmd
from rbee.keeper.context import App
from rbee.keeper.output import CLIError

LOCAL = "localhost"  # the queen's own hive runs inside the queen: its log is the queen's

app = typer.Typer(help="Logs of the queen, a hive or a worker (on this machine or over SSH).", no_args_is_help=True)
Lines = Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end.", min=1)]
Follow = Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")]


@app.command()
def queen(lines: Lines = 50, follow: Follow = False) -> None:
    """The queen's log (the local hive and its worker starts are in it too)."""
    show(paths.queen_log_file(), lines, follow)


@app.command()
def hive(alias: Annotated[str, typer.Argument(help="The hive's alias; 'localhost' is the queen's own.")],
         lines: Lines = 50, follow: Follow = False) -> None:
    """A hive's log: the queen's for 'localhost', else read over SSH on that machine."""
    if alias == LOCAL:
        show(paths.queen_log_file(), lines, follow)
    else:
        hive_cmd.logs(alias, lines, follow)


@app.command()
def worker(worker_id: Annotated[str, typer.Argument(help="The worker's id, from `rbee worker list`.")],
           lines: Lines = 50, follow: Follow = False) -> None:
    """A worker's llama-server log, on whichever machine it runs."""
    try:
        local = paths.worker_log(worker_id)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    ctx = App()
    where = LOCAL
    if ctx.running_queen() is not None:
        known = {w["id"]: w["hive"] for w in ctx.client.get("/v1/workers")}
        where = known.get(worker_id, LOCAL)
    if where != LOCAL:
        hive_cmd.logs(where, lines, follow, worker=worker_id)
        return
    if not local.exists():
        raise CLIError(f"there is no log for worker '{worker_id}' on this machine ({local}); `rbee worker list` "
                       "shows the workers")
    show(local, lines, follow)
