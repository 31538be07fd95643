"""Logging set-up for the daemons, and reading the tail of a log file."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def setup(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per proxied request would drown the log and cost time on the token path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def tail(path: Path, lines: int = 20, window: int = 64 * 1024) -> list[str]:
    """The last `lines` non-empty lines of a text file, read from its end ([] when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - window))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]
