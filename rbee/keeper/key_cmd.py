"""`rbee key create|list|revoke|usage` and `rbee audit`."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Annotated

import typer

from rbee.keeper.context import App
from rbee.keeper.output import CLIError, table

app = typer.Typer(help="API keys for the OpenAI API: create, list, revoke, and see what each used.",
                  no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float, *, future: bool) -> float:
    """'30d', '12h', '90m', '2w' (from now: ahead when `future`, back otherwise) or a date '2027-01-31'."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
        return now + seconds if future else now - seconds
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CLIError(f"{text!r} is neither a duration like 30d, 12h, 90m, 2w nor a date like 2027-01-31") from None
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what will use the key (unique).")],
    expires: Annotated[str | None, typer.Option(help="When it stops working: 30d, 12h, 2w, or a date.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models it may use (default: all).")] = None,
    rpm: Annotated[int | None, typer.Option(help="At most this many requests per minute.", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="At most this many tokens per minute.", min=1)] = None,
) -> None:
    """Create an API key; its secret is printed once, on stdout."""
    spec: dict[str, object] = {"name": name, "rpm": rpm, "tpm": tpm}
    if expires:
        spec["expires_at"] = parse_when(expires, time.time(), future=True)
    if models:
        spec["models"] = [m.strip() for m in models.split(",") if m.strip()]
    ctx = App()
    created = ctx.queen().post("/v1/keys", json=spec)
    ctx.out.success(f"created API key '{created['name']}' (expires {_when(created['expires_at'])}); "
                    "it is shown only now, so store it somewhere safe:")
    ctx.out.out.print(created["secret"])


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every key with its limits; the secrets are never shown again."""
    ctx = App()
    keys = ctx.queen().get("/v1/keys")
    if as_json:
        ctx.out.json(keys)
        return
    if not keys:
        ctx.out.info("no API keys: the queen answers this machine without one. `rbee key create --name NAME` "
                     "makes one (and from then on every request needs a key).")
        return
    now = time.time()
    t = table("API keys", "NAME", "PREFIX", "STATE", "CREATED", "EXPIRES", "LAST USED", "MODELS", "RPM", "TPM")
    for k in keys:
        state = ("[red]revoked[/red]" if k["revoked_at"] else
                 "[red]expired[/red]" if k["expires_at"] and k["expires_at"] <= now else "[green]active[/green]")
        t.add_row(k["name"], k["prefix"] + "…", state, _when(k["created_at"]), _when(k["expires_at"]),
                  _when(k["last_used_at"]), ", ".join(k["models"]) if k["models"] else "all",
                  str(k["rpm"] or "-"), str(k["tpm"] or "-"))
    ctx.out.out.print(t)


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="The key's name, from `rbee key list`.")]) -> None:
    """Revoke a key: it stops working at once (its usage stays on record)."""
    ctx = App()
    ctx.queen().delete(f"/v1/keys/{name}")
    ctx.out.success(f"revoked API key '{name}'")


@app.command()
def usage(
    name: Annotated[str | None, typer.Argument(help="Only this key.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, errors and tokens per key and model (requests without a key show as '(local)')."""
    ctx = App()
    rows = ctx.queen().request("GET", "/v1/usage", params={"key": name} if name else None)
    if as_json:
        ctx.out.json(rows)
        return
    if not rows:
        ctx.out.info("no usage recorded yet")
        return
    t = table("Usage", "KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT TOKENS", "COMPLETION TOKENS")
    for r in rows:
        t.add_row(r["name"], r["model"], str(r["requests"]), str(r["errors"]), str(r["prompt_tokens"]),
                  str(r["completion_tokens"]))
    ctx.out.out.print(t)


def audit(
    limit: Annotated[int, typer.Option(help="Show at most this many (the latest).", min=1)] = 100,
    since: Annotated[str | None, typer.Option(help="Only since then: 1h, 7d, or a date.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action; '*' matches anything, e.g. 'key.*'.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The queen's audit log: keys, hives, models and workers changed, by whom, from where."""
    params: dict[str, str | int | float] = {"limit": limit}
    if since:
        params["since"] = parse_when(since, time.time(), future=False)
    if action:
        params["action"] = action
    ctx = App()
    entries = ctx.queen().request("GET", "/v1/audit", params=params)
    if as_json:
        ctx.out.json(entries)
        return
    if not entries:
        ctx.out.info("the audit log has no entries" + (" matching that" if since or action else ""))
        return
    t = table("Audit log", "WHEN", "WHO", "FROM", "ACTION", "TARGET", "DETAIL")
    for e in entries:
        t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["actor"], e["source"],
                  e["action"], e["target"], e["detail"])
    ctx.out.out.print(t)
