"""Logging set-up for the daemons, and reading the tail of a log file."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path


def setup(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per proxied request would drown the log and cost time on the token path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last `lines` non-empty lines of a text file ([] when it does not exist)."""
    try:
        with path.open("r", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines * 4) if line.strip()][-lines:]
    except FileNotFoundError:
        return []
