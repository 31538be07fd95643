"""Logging set-up for the daemons, and reading the tail of a log file."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "INFO") -> None:
    """Log to stderr; RBEE_LOG_FORMAT=json writes one JSON object per line (for log shippers)."""
    handler = logging.StreamHandler()
    if os.environ.get("RBEE_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # One line per proxied request would drown the log and cost time on the token path.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def show(path: Path, lines: int, follow: bool, poll_s: float = 0.5) -> None:
    """Print the last `lines` lines of a log file; with `follow`, then what is written to it (until Ctrl-C)."""
    for line in tail(path, lines):
        print(line, flush=True)
    if not follow:
        return
    offset = path.stat().st_size if path.exists() else 0
    while True:
        time.sleep(poll_s)
        try:
            with path.open("rb") as f:
                if f.seek(0, os.SEEK_END) < offset:
                    offset = 0  # rotated or truncated: from its start
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            continue
        offset += len(chunk)
        if chunk:
            print(chunk.decode(errors="replace"), end="", flush=True)


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
