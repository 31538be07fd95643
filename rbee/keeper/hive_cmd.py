"""`rbee hive list|install|uninstall|start|stop|restart|logs|upgrade`: hives on other machines, over SSH."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from rbee.common import paths
from rbee.keeper import hives_conf
from rbee.keeper.context import App
from rbee.keeper.hive_install import Installer
from rbee.keeper.output import CLIError, human_bytes, table
from rbee.keeper.ssh import SSHError
from rbee.keeper.watch import devices_table, held_on
from rbee.keeper.worker_cmd import STATE_STYLE

app = typer.Typer(help="Hives on your other machines: install over SSH, start, stop, list.", no_args_is_help=True)

AliasArg = Annotated[str, typer.Argument(help="The machine's alias in ~/.config/rbee/hives.conf or ~/.ssh/config.")]
LOCALHOST = "localhost"


def _host(alias: str) -> hives_conf.HostConfig:
    if alias == LOCALHOST:
        raise CLIError("'localhost' is the queen's own hive: it runs inside the queen and needs no install "
                       "(`rbee queen start|stop`).")
    try:
        return hives_conf.lookup(alias)
    except (hives_conf.UnknownHost, hives_conf.HivesConfError) as exc:
        raise CLIError(str(exc)) from exc


def _with_installer(alias: str, work: Callable[[Installer], Awaitable[None]], queen: bool = True,
                    queen_url: str | None = None) -> App:
    ctx = App()
    host = _host(alias)
    client = ctx.queen() if queen else ctx.client
    installer = Installer(host, client, ctx.out, queen_url)

    async def go() -> None:
        try:
            await work(installer)
        finally:
            await installer.close()

    try:
        asyncio.run(go())
    except SSHError as exc:
        raise CLIError(str(exc)) from exc
    return ctx


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every configured and registered hive: state, address, devices, version."""
    ctx = App()
    try:
        configured = hives_conf.load()
    except hives_conf.HivesConfError as exc:
        raise CLIError(str(exc)) from exc
    known = ctx.client.get("/v1/hives") if ctx.running_queen() is not None else []
    rows = {h["alias"]: h for h in known}
    for alias, host in configured.items():
        state = "queen not running" if alias == LOCALHOST else "not installed"  # localhost lives in the queen
        rows.setdefault(alias, {"alias": alias, "state": state, "address": host.destination(),
                                "port": host.hive_port, "version": None, "devices": [], "workers": 0})
    if as_json:
        ctx.out.json(list(rows.values()))
        return
    t = table("Hives", "ALIAS", "STATE", "ADDRESS", "DEVICES", "WORKERS", "VERSION", "LAST SEEN")
    for h in rows.values():
        style = STATE_STYLE.get(str(h["state"]), "" if h["state"] == "ready" else "dim")
        devices = ", ".join(f"{d['id']} {human_bytes(d['total_bytes'])}" for d in h.get("devices") or []) or "-"
        address = f"{h['address']}:{h['port']}" if h.get("address") and h.get("port") else h.get("address") or "-"
        seen = h.get("last_seen_s")
        t.add_row(h["alias"], f"[{style}]{h['state']}[/{style}]" if style else str(h["state"]), address, devices,
                  str(h.get("workers", 0)), str(h.get("version") or "-"), "-" if seen is None else f"{seen:.0f} s ago")
    ctx.out.out.print(t)
    for h in rows.values():
        if h.get("problem"):
            ctx.out.warn(f"{h['alias']}: {h['problem']}")


@app.command()
def status(alias: AliasArg, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """One hive: its devices with memory bars and live figures, and the workers on each."""
    ctx = App()
    if ctx.running_queen() is None:
        raise CLIError(f"no queen is running at {ctx.queen_url}; `rbee queen start` starts one")
    hive = next((h for h in ctx.client.get("/v1/hives") if h["alias"] == alias), None)
    if hive is None:
        raise CLIError(f"the queen knows no hive '{alias}'; `rbee hive list` shows them")
    workers = [w for w in ctx.client.get("/v1/workers") if held_on(w, alias)]  # a spread's helper's too
    if as_json:
        ctx.out.json({**hive, "worker_list": workers})
        return
    ctx.out.out.print(devices_table([hive], workers))
    if hive.get("problem"):
        ctx.out.warn(f"{alias}: {hive['problem']}")


@app.command()
def install(
    alias: AliasArg,
    queen_url: Annotated[str | None, typer.Option(help="The queen's address as the machine sees it (default: the "
                                                       "address its SSH connection comes from).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Reinstall rbee even if this version is there.")] = False,
) -> None:
    """Install (or repair) a hive on a machine over SSH and wait until it has joined."""
    _with_installer(alias, lambda i: i.install(force=force), queen_url=queen_url)


@app.command()
def upgrade(
    alias: Annotated[str | None, typer.Argument(help="The machine's alias (or --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every hive in hives.conf.")] = False,
) -> None:
    """Install this rbee's version on a hive (or all of them) and restart it."""
    if (alias is None) == (not all_):
        raise CLIError("name one hive, or give --all")
    try:
        aliases = [a for a in hives_conf.load() if a != LOCALHOST] if all_ else [alias or ""]
    except hives_conf.HivesConfError as exc:
        raise CLIError(str(exc)) from exc
    for name in aliases:
        _with_installer(name, lambda i: i.install(force=True))


@app.command()
def uninstall(alias: AliasArg) -> None:
    """Stop the hive, remove rbee from the machine (models and engines stay) and revoke its token."""
    ctx = _with_installer(alias, lambda i: i.uninstall())
    if ctx.running_queen() is not None:
        try:
            ctx.client.delete(f"/v1/hives/{alias}")
        except CLIError:
            pass  # it was never enrolled: nothing to revoke
    ctx.out.success(f"hive {alias} uninstalled; its join token is revoked")


def _agent(alias: str, command: str) -> None:
    async def work(installer: Installer) -> None:
        output = await installer.agent(command)
        for line in output.strip().splitlines():
            installer.out.info(line)

    _with_installer(alias, work, queen=False)


@app.command()
def start(alias: AliasArg) -> None:
    """Start the hive on that machine."""
    _agent(alias, "start")


@app.command()
def stop(alias: AliasArg) -> None:
    """Stop the hive (and its workers) on that machine."""
    _agent(alias, "stop")


@app.command()
def restart(alias: AliasArg) -> None:
    """Restart the hive on that machine."""
    _agent(alias, "restart")


@app.command()
def logs(
    alias: AliasArg,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    worker: Annotated[str | None, typer.Option(help="A worker's log instead of the hive's.")] = None,
) -> None:
    """The end of the hive's log on that machine (or of one of its workers')."""
    if worker is not None:
        try:
            paths.worker_log(worker)  # refuses what is not a worker id before it reaches a remote shell
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    if not follow:
        async def show(installer: Installer) -> None:
            output = await installer.agent(f"logs -n {int(lines)}" + (f" --worker {worker}" if worker else ""))
            print(output, end="" if output.endswith("\n") else "\n", flush=True)  # a log is the result: stdout

        _with_installer(alias, show, queen=False)
        return

    async def work(installer: Installer) -> None:
        await installer.follow_logs(int(lines), worker)

    _with_installer(alias, work, queen=False)
