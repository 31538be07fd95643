"""`rbee queen start|stop|status`."""

from __future__ import annotations

from typing import Annotated

import typer

from rbee.common import settings
from rbee.common.version import current as current_version
from rbee.common.version import parse as parse_version
from rbee.keeper.context import App
from rbee.keeper.daemon import ensure_queen, stop_queen
from rbee.keeper.queen_foreground import serve_foreground

app = typer.Typer(help="Start, stop and inspect the queen (the API on port 7833).", no_args_is_help=True)


@app.command()
def start(
    foreground: Annotated[bool, typer.Option("--foreground", help="Run in this terminal (for service managers).")]
    = False,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 7833, or RBEE_QUEEN_PORT).")]
    = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default 127.0.0.1). Beyond loopback the queen needs API keys (`rbee key create`)."
    )] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="Listen beyond loopback without requiring keys: anyone who reaches the port "
        "may use and manage the queen. Only for a network you trust completely.")] = False,
) -> None:
    """Start the queen: in the background, or in this terminal with --foreground."""
    port = port or settings.queen_port()
    host = host or settings.queen_host()
    if foreground:
        serve_foreground(host, port, insecure_no_auth)
        return
    scheme = "https" if settings.queen_tls() else "http"
    ctx = App(queen_url=f"{scheme}://127.0.0.1:{port}")  # a queen on any address also answers on loopback
    health = ctx.running_queen()
    if health is not None and parse_version(health.version) >= parse_version(current_version()):
        ctx.out.success(f"queen already running on port {port} (pid {health.pid}, v{health.version}, listening "
                        f"on {health.listen_host}); `rbee queen stop` first to start it differently")
        return
    ensure_queen(ctx.client, ctx.out, host=host, insecure_no_auth=insecure_no_auth)


@app.command()
def stop() -> None:
    """Stop the queen and every worker it started."""
    ctx = App()
    if not stop_queen(ctx.client, ctx.out):
        ctx.out.info(f"no queen is running on {ctx.queen_url}")


@app.command()
def status() -> None:
    """Say whether the queen is running, where, and which version."""
    ctx = App()
    health = ctx.running_queen()
    if health is None:
        ctx.out.info(f"queen: not running (would listen on {ctx.queen_url})")
        raise typer.Exit(1)
    ctx.out.out.print(f"queen: running on {ctx.queen_url}, pid {health.pid}, v{health.version}")
