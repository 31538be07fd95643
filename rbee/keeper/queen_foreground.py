"""`rbee queen start --foreground`: the queen in this process, reached without importing typer or rich.

`parse` takes only the plain spellings of the command's options; anything else (--help, a bad port, an unknown or
repeated option) returns None, and the typer app parses it, with its usual messages.
"""

from __future__ import annotations

from rbee.common import settings

_VALUED = ("--port", "--host")
_FLAGS = ("--foreground", "--insecure-no-auth")


def parse(argv: list[str]) -> tuple[str, int, bool] | None:
    """(host, port, insecure_no_auth) for `queen start --foreground [--port N] [--host H] [--insecure-no-auth]`."""
    if argv[:2] != ["queen", "start"]:
        return None
    seen: dict[str, str] = {}
    rest = argv[2:]
    while rest:
        token, rest = rest[0], rest[1:]
        name, has_value, value = token.partition("=")
        if name in _FLAGS and not has_value:
            value = ""
        elif name in _VALUED and has_value:
            pass
        elif name in _VALUED and rest:
            value, rest = rest[0], rest[1:]
        else:
            return None
        if name in seen or (name in _VALUED and (not value or value.startswith("-"))):
            return None
        seen[name] = value
    if "--foreground" not in seen or not seen.get("--port", "0").isdigit():
        return None
    port = int(seen.get("--port", "0")) or settings.queen_port()
    return seen.get("--host") or settings.queen_host(), port, "--insecure-no-auth" in seen


def serve_foreground(host: str, port: int, insecure_no_auth: bool) -> None:
    """Run the queen until it is told to stop; a refused start raises CLIError, told in one line."""
    from rbee.queen.db import QueenDBError
    from rbee.queen.server import PortInUseError, StartRefused, serve

    try:
        serve(host, port, insecure_no_auth=insecure_no_auth)
    except (QueenDBError, StartRefused) as exc:
        from rbee.keeper.output import CLIError

        raise CLIError(str(exc)) from exc
    except PortInUseError as exc:
        from rbee.keeper.output import CLIError

        raise CLIError(f"{exc.strerror}: another program is listening there. Stop it, or start the "
                       f"queen on another port with --port (and RBEE_QUEEN_PORT for the CLI).") from exc
