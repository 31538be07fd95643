"""The `rbee` command's entry point: `rbee queen start --foreground`, the daemon, starts without the CLI's libraries
(typer, rich, httpx's CLI: ~15 MB a running queen would keep); every other command runs the typer app (rbee.keeper.cli).
"""

from __future__ import annotations

import sys

from rbee.common.settings import SettingsError
from rbee.keeper import queen_foreground


def run() -> None:
    try:
        wanted = queen_foreground.parse(sys.argv[1:])
        if wanted is not None:
            queen_foreground.serve_foreground(*wanted)
            return
        from rbee.keeper.cli import app

        app()
    except KeyboardInterrupt:
        from rbee.keeper.output import Output

        Output().err.print("\ninterrupted")
        sys.exit(130)
    except Exception as exc:  # the two kinds of user-facing failure, told in one line (anything else is a bug)
        from rich.markup import escape

        from rbee.keeper.output import CLIError, Output

        if isinstance(exc, SettingsError):
            Output().err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
            sys.exit(2)
        if isinstance(exc, CLIError):
            Output().err.print(f"[red]error:[/red] {escape(exc.message)}", markup=True, highlight=False)
            sys.exit(exc.code)
        raise
