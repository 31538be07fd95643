"""`rbee hive-agent ...`: this machine's own hive, run by `rbee hive install|start|stop|logs` over SSH.

Hidden from `rbee --help`: users manage hives from the queen's machine with `rbee hive ...`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from rbee import __version__
from rbee.common import paths
from rbee.common.daemon import PortInUseError
from rbee.common.logs import show as show_log
from rbee.common.tls import TLSError
from rbee.hive import background
from rbee.hive import config as hive_config
from rbee.hive.catalog import CatalogError
from rbee.keeper.output import CLIError, Output

app = typer.Typer(help="This machine's hive (used over SSH by `rbee hive ...`).", no_args_is_help=True)


def _config() -> hive_config.HiveConfig:
    try:
        return hive_config.load()
    except hive_config.HiveConfigError as exc:
        raise CLIError(str(exc)) from exc


@app.command()
def run() -> None:
    """Run the hive in this terminal (what the service manager starts)."""
    from rbee.hive.server import serve

    config = _config()
    try:
        serve(config)
    except TLSError as exc:
        raise CLIError(f"{exc}; re-run `rbee hive install {config.alias}` on the queen's machine") from exc
    except CatalogError as exc:  # a damaged catalog.sqlite: what to do, not a traceback
        raise CLIError(str(exc)) from exc
    except PortInUseError as exc:
        raise CLIError(f"the hive's port {config.port} is taken by another program on this machine. Stop it, or "
                       f"set another `HivePort` for '{config.alias}' in hives.conf and re-run "
                       f"`rbee hive install {config.alias}`.") from exc


@app.command()
def start() -> None:
    """Start the hive in the background (systemd user unit, launchd agent, or a detached process)."""
    config = _config()
    pid = background.running_pid()
    if pid is not None:
        Output().success(f"hive '{config.alias}' already running (pid {pid})")
        return
    try:
        pid = background.start(config)
    except background.BackgroundError as exc:
        raise CLIError(str(exc)) from exc
    Output().success(f"hive '{config.alias}' started (pid {pid}, {background.manager()}, port {config.port})")


@app.command()
def stop() -> None:
    """Stop the hive and its workers."""
    Output().success("hive stopped" if background.stop() else "no hive was running")


@app.command()
def restart() -> None:
    """Stop the hive if it runs, then start it."""
    background.stop()
    start()


@app.command()
def status() -> None:
    """This machine's hive as JSON: running, pid, version, service manager."""
    pid = background.running_pid()
    print(json.dumps({"running": pid is not None, "pid": pid, "version": __version__,
                      "manager": background.manager(), "log": str(paths.hive_log_file())}))


@app.command()
def logs(
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    worker: Annotated[str | None, typer.Option(help="A worker's log instead of the hive's.")] = None,
) -> None:
    """The end of the hive's log (or of one of its workers')."""
    try:
        path = paths.worker_log(worker) if worker else paths.hive_log_file()
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    show_log(path, lines, follow)


@app.command()
def uninstall() -> None:
    """Stop the hive and remove its service files, config and certificate key (models and engines stay)."""
    background.stop()
    background.remove_service_files()
    hive_config.config_file().unlink(missing_ok=True)
    for name in ("hive.pem", "hive.key"):  # the CA certificate may be the queen's own, on the queen's machine
        (paths.tls_dir() / name).unlink(missing_ok=True)
    Output().success("hive uninstalled from this machine")
