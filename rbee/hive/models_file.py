"""~/.config/rbee/models.toml, parsed and kept in memory, so that the event loop never touches the disk for it.

Readers on the event loop (a request's model settings and aliases, the reaper's min_replicas) get the parsed
file from memory. A daemon keeps that copy current with `refresh()` every CHECK_INTERVAL_S (a supervised
loop, `supervise.every`), which looks at the file's modification time and size in a worker thread, and reads
it again when they change: an edit by hand applies within about a second, one through the API
(`model_refs.save_model_settings`, which re-reads after writing) to the very next request. Readers that are
not on an event loop (the CLI, a worker thread) look at the file themselves first, as they always did. A
file that cannot be read or parsed is kept as its error, raised to every reader until the file changes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECK_INTERVAL_S = 1.0

Parsed = dict[str, Any]
Stamp = tuple[int, int] | None  # (mtime in ns, size); None: there is no file


class UnreadableFile(ValueError):
    """The file is there but cannot be read or is not TOML; the message says which file and why."""


@dataclass(frozen=True)
class _Snapshot:
    path: Path
    stamp: Stamp
    data: Parsed
    error: str | None = None


class ModelsFile:
    """The parsed file at `locate()` (a function: the file moves with RBEE_HOME)."""

    def __init__(self, locate: Callable[[], Path]) -> None:
        self._locate = locate
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()  # one look at the disk at a time (the watch, API threads, the CLI)

    def parsed(self) -> Parsed:
        """The file's tables ({} when there is none); `UnreadableFile` when it is damaged.

        On the event loop this is the copy in memory; it looks at the disk only when no copy of this file
        was made yet (a daemon makes one with `refresh()` before it serves; unit tests may not).
        """
        snapshot = self._snapshot
        if snapshot is None or snapshot.path != self._locate() or not _on_event_loop():
            snapshot = self.check()
        if snapshot.error is not None:
            raise UnreadableFile(snapshot.error)
        return snapshot.data

    def check(self, force: bool = False) -> _Snapshot:
        """Look at the file, and read it again if it changed (or if `force`). Blocking: not on the event loop."""
        with self._lock:
            path = self._locate()
            known = self._snapshot
            stamp = _stamp(path)
            if force or known is None or known.path != path or known.stamp != stamp:
                known = self._snapshot = _read(path, stamp)
            return known

    async def refresh(self) -> None:
        """`check()` in a worker thread."""
        await asyncio.to_thread(self.check)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _stamp(path: Path) -> Stamp:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    except OSError:
        return (-1, -1)  # there but not readable: `_read` says why
    return (found.st_mtime_ns, found.st_size)


def _read(path: Path, stamp: Stamp) -> _Snapshot:
    if stamp is None:
        return _Snapshot(path, None, {})
    import tomllib  # here, not at the top: a queen without a models.toml does without it (~0.5 MB)

    try:
        return _Snapshot(path, stamp, tomllib.loads(path.read_text()))
    except FileNotFoundError:  # removed since it was looked at
        return _Snapshot(path, None, {})
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
        return _Snapshot(path, stamp, {}, f"cannot read {path}: {exc}")
