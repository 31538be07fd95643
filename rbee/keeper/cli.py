"""The `rbee` command's typer app: wiring only; each command lives in its own module (rbee.keeper.main runs it)."""

from __future__ import annotations

import typer

from rbee import __version__
from rbee.keeper import (
    dashboard_cmd,
    engine_cmd,
    hive_agent_cmd,
    hive_cmd,
    infer_cmd,
    key_cmd,
    logs_cmd,
    model_cmd,
    queen_cmd,
    status_cmd,
    tls_cmd,
    transcribe_cmd,
    worker_cmd,
)

app = typer.Typer(
    name="rbee",
    help="rbee: every GPU you own behind one OpenAI-compatible API (http://localhost:7833/v1).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("infer")(infer_cmd.infer)
app.command("transcribe")(transcribe_cmd.transcribe)
app.command("status")(status_cmd.status)
app.command("dashboard")(dashboard_cmd.dashboard)
app.add_typer(queen_cmd.app, name="queen")
app.add_typer(model_cmd.app, name="model")
app.add_typer(engine_cmd.app, name="engine")
app.add_typer(worker_cmd.app, name="worker")
app.add_typer(hive_cmd.app, name="hive")
app.add_typer(key_cmd.app, name="key")
app.command("audit")(key_cmd.audit)
app.add_typer(tls_cmd.app, name="tls")
app.add_typer(logs_cmd.app, name="logs")
app.add_typer(hive_agent_cmd.app, name="hive-agent", hidden=True)


def _version(value: bool) -> None:
    if value:
        print(f"rbee {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """rbee: a private AI cloud in one command."""

