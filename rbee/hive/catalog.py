"""The hive's model catalog: one SQLite table of the models this machine holds.

Every call runs in a thread (sqlite3 blocks). A file deleted behind rbee's back is
reported as `missing` and never served.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

from rbee.contracts.models import ModelEntry
from rbee.hive.gguf_info import read_summary

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    source TEXT NOT NULL,
    architecture TEXT,
    context_length INTEGER,
    pooling TEXT,
    added_at REAL NOT NULL,
    last_used_at REAL
)
"""
_COLUMNS = "name, path, size_bytes, source, architecture, context_length, pooling, added_at, last_used_at"


def name_for_file(path: Path) -> str:
    """A catalog name for a file: its stem, lower-cased, without a trailing `.gguf`."""
    return re.sub(r"[^a-z0-9._-]+", "-", path.name.removesuffix(".gguf").lower()).strip("-") or "model"


def _describe(path: Path, name: str | None, source: str) -> ModelEntry:
    path = path.expanduser().resolve()
    summary = read_summary(path)
    return ModelEntry(
        name=name or name_for_file(path),
        path=str(path),
        size_bytes=path.stat().st_size,
        source=source,
        architecture=summary.architecture,
        context_length=summary.context_length,
        pooling=summary.pooling,
        added_at=time.time(),
    )


class Catalog:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db_path = db_path
        self._lock = asyncio.Lock()
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._db_path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    @staticmethod
    def _entry(row: tuple[object, ...]) -> ModelEntry:
        keys = [c.strip() for c in _COLUMNS.split(",")]
        entry = ModelEntry.model_validate(dict(zip(keys, row, strict=True)))
        entry.missing = not Path(entry.path).is_file()
        return entry

    async def add_file(self, path: Path, name: str | None = None, source: str = "local") -> ModelEntry:
        """Register a GGUF file under `name` (an explicit name is re-pointed at the new file), or under a
        name derived from the file's, made unique with a `-2`, `-3`... suffix."""
        entry = await asyncio.to_thread(_describe, path, name, source)
        async with self._lock:
            if name is None:
                base, n = entry.name, 1
                while (taken := await asyncio.to_thread(self._get, entry.name)) and taken.path != entry.path:
                    n += 1
                    entry.name = f"{base}-{n}"
            await asyncio.to_thread(self._upsert, entry)
        return entry

    def _upsert(self, e: ModelEntry) -> None:
        with self._connect() as db:
            db.execute(
                f"INSERT INTO models ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET path=excluded.path, size_bytes=excluded.size_bytes, "
                "source=excluded.source, architecture=excluded.architecture, "
                "context_length=excluded.context_length, pooling=excluded.pooling",
                (e.name, e.path, e.size_bytes, e.source, e.architecture, e.context_length, e.pooling,
                 e.added_at, e.last_used_at),
            )

    async def get(self, name: str) -> ModelEntry | None:
        return await asyncio.to_thread(self._get, name)

    def _get(self, name: str) -> ModelEntry | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM models WHERE name = ?", (name,)).fetchone()
        return self._entry(row) if row else None

    async def find_path(self, path: Path) -> ModelEntry | None:
        resolved = await asyncio.to_thread(lambda: str(path.expanduser().resolve()))
        return next((e for e in await self.list() if e.path == resolved), None)

    async def list(self) -> list[ModelEntry]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[ModelEntry]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM models ORDER BY name").fetchall()
        return [self._entry(row) for row in rows]

    async def touch(self, name: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._execute, "UPDATE models SET last_used_at = ? WHERE name = ?",
                                    (time.time(), name))

    async def remove(self, name: str) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self._execute, "DELETE FROM models WHERE name = ?", (name,)) > 0

    def _execute(self, sql: str, params: tuple[object, ...]) -> int:
        with self._connect() as db:
            return db.execute(sql, params).rowcount
