"""Logging set-up for the daemons, and reading the tail of a log file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import time
from pathlib import Path

from rbee.common import paths, settings

MAX_MESSAGE = 8192  # characters of one log message; a longer one is cut (a report can carry long strings)
_CHECK_EVERY = 64  # records between two looks at the log file's size


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                 "level": record.levelname, "logger": record.name, "message": _cut(record.getMessage())}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + f"… ({len(message)} characters)"


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _cut(record.message)
        return super().formatMessage(record)


def _file_path(fd: int) -> Path | None:
    """The path of the regular file `fd` writes to, where the system says (Linux, macOS); else None."""
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        if Path("/proc/self/fd").is_dir():
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
        if sys.platform == "darwin":
            import fcntl

            return Path(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0").decode())
    return None


class RotatingStderrHandler(logging.StreamHandler):
    """Logs to stderr. When stderr is a file (the background queen's, a hive's systemd `append:` or launchd
    log) and it passes RBEE_LOG_MAX_MB, it becomes LOG.1 (replacing an older one) and a fresh LOG is
    opened onto stderr and stdout: a daemon's log stays bounded however much is logged."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.max_bytes = settings.log_max_bytes()
        self._count = 0

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self._count += 1
        if self._count % _CHECK_EVERY == 0:
            self.rotate_if_large()

    def rotate_if_large(self) -> None:
        fd = sys.stderr.fileno()
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size <= self.max_bytes or (path := _file_path(fd)) is None:
                return
            self.flush()
            os.replace(path, path.with_name(path.name + ".1"))
            fresh = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            same_file = os.path.sameopenfile(1, fd)
            os.dup2(fresh, fd)
            if same_file:
                os.dup2(fresh, 1)
            os.close(fresh)


def bound_folder(folder: Path, max_bytes: int, keep: int = 100) -> None:
    """Keep the workers' logs in `folder` bounded: a log past `max_bytes` is copied to LOG.1 and emptied in
    place (llama-server holds it open for appending, so it goes on at the new end), and only the `keep`
    most recently written logs stay. Blocking: run it in a thread."""
    try:
        logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for log in logs[keep:]:
        with contextlib.suppress(OSError):
            log.unlink()
            log.with_name(log.name + ".1").unlink(missing_ok=True)
    for log in logs[:keep]:
        with contextlib.suppress(OSError):
            if log.stat().st_size > max_bytes:
                older = log.with_name(log.name + ".1")
                with log.open("rb") as src, paths.open_private(older, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.truncate(log, 0)


def setup(level: str = "INFO") -> None:
    """Log to stderr (rotated when it is a file, see RotatingStderrHandler), each message at most MAX_MESSAGE
    characters; RBEE_LOG_FORMAT=json writes one JSON object per line (for log shippers)."""
    handler = RotatingStderrHandler()
    if os.environ.get("RBEE_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
