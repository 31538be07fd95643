"""The CLI's one voice: results to stdout, status and errors to stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


class Output:
    def __init__(self) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)

    def info(self, message: str) -> None:
        self.err.print(escape(message))

    def success(self, message: str) -> None:
        self.err.print(f"[green]✓[/green] {escape(message)}")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]![/yellow] {escape(message)}")

    def json(self, data: Any) -> None:
        self.out.print_json(json.dumps(data))



def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(title: str, *columns: str) -> Table:
    """A table whose cells wrap instead of being cut, so ids and paths stay whole when piped."""
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, overflow="fold")
    return t


class CLIError(Exception):
    """A failure to report to the user in one line, without a traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
