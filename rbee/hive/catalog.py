"""The hive's model catalog: the models this machine holds, in SQLite.

Each row keeps a few columns to query by and the whole `ModelEntry` as JSON. Every call runs
in a thread (sqlite3 blocks). A file deleted behind rbee's back marks its entry `missing`; such
an entry is listed (so the user sees it) but never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from rbee.common import paths
from rbee.contracts.models import ModelEntry
from rbee.hive.ggml_whisper import read_whisper
from rbee.hive.gguf_info import GGUFSummary, NotAGGUFError, read_summary, split_parts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    added_at REAL NOT NULL,
    last_used_at REAL,
    entry TEXT NOT NULL
)
"""


class CatalogError(RuntimeError):
    """The catalog database cannot be read or written; the message says where and what to do."""


def name_for_file(path: Path) -> str:
    """A catalog name for a file: its stem, lower-cased, without a trailing `.gguf` (or a whisper model's `.bin`)."""
    stem = path.name.removesuffix(".gguf").removesuffix(".bin")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def read_header(path: Path) -> GGUFSummary:
    """What a model file says about itself: a GGUF header, or a whisper.cpp ggml model's. Blocking."""
    try:
        return read_summary(path)
    except NotAGGUFError as exc:
        whisper = read_whisper(path)
        if whisper is None:
            raise NotAGGUFError(f"{exc} (nor a whisper.cpp ggml model)") from exc
        return whisper


def describe_file(path: Path, name: str | None = None, source: str = "local", **extra: object) -> ModelEntry:
    """A catalog entry for a model file (and its other parts, when split), from its header. Blocking."""
    path = path.expanduser().resolve()
    summary = read_header(path)
    files = split_parts(path)
    return ModelEntry.model_validate({
        "name": name or name_for_file(path),
        "path": str(path),
        "files": [str(f) for f in files],
        "size_bytes": sum(f.stat().st_size for f in files),
        "source": source,
        "architecture": summary.architecture,
        "quantization": summary.quantization,
        "parameter_count": summary.parameter_count,
        "context_length": summary.context_length,
        "pooling": summary.pooling,
        "header": dataclasses.asdict(summary),
        "added_at": time.time(),
        **extra,
    })


class Catalog:
    def __init__(self, db_path: Path) -> None:
        paths.touch_private(db_path)
        self.db_path = db_path
        self._lock = asyncio.Lock()
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")  # kept by the file: set once
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CatalogError(
                f"the model catalog {db_path} cannot be opened ({exc}). If it is damaged, move it aside "
                "and add your models again (the model files themselves are untouched)."
            ) from exc

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a connection that is closed right after (not whenever the GC gets to it:
        under load, open connections to the catalog piled up by the dozen)."""
        db = sqlite3.connect(self.db_path, timeout=10)
        try:
            with db:
                yield db
        finally:
            db.close()

    @staticmethod
    def _entry(row: tuple[str, float | None]) -> ModelEntry:
        entry = ModelEntry.model_validate_json(row[0])
        entry.last_used_at = row[1]
        entry.missing = not all(Path(f).is_file() for f in (entry.files or [entry.path]))
        return entry

    async def add_file(self, path: Path, name: str | None = None, source: str = "local") -> ModelEntry:
        """Register a GGUF file under `name` (an explicit name is re-pointed at the new file), or under a
        name derived from the file's, made unique with a `-2`, `-3`... suffix."""
        entry = await asyncio.to_thread(describe_file, path, name, source)
        return await self.add(entry, unique=name is None)

    async def add(self, entry: ModelEntry, unique: bool = False) -> ModelEntry:
        async with self._lock:
            if unique:
                base, n = entry.name, 1
                while (taken := await asyncio.to_thread(self._get, entry.name)) and taken.path != entry.path:
                    n += 1
                    entry.name = f"{base}-{n}"
            await asyncio.to_thread(self._upsert, entry)
        return entry

    def _upsert(self, e: ModelEntry) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO catalog (name, path, added_at, last_used_at, entry) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET path=excluded.path, entry=excluded.entry",
                (e.name, e.path, e.added_at, e.last_used_at, e.model_dump_json(exclude={"missing"})),
            )

    async def get(self, name: str) -> ModelEntry | None:
        return await asyncio.to_thread(self._get, name)

    def _get(self, name: str) -> ModelEntry | None:
        with self._connect() as db:
            row = db.execute("SELECT entry, last_used_at FROM catalog WHERE name = ?", (name,)).fetchone()
        return self._entry(row) if row else None

    async def find_path(self, path: Path) -> ModelEntry | None:
        resolved = await asyncio.to_thread(lambda: str(path.expanduser().resolve()))
        return next((e for e in await self.entries() if e.path == resolved), None)

    async def entries(self) -> list[ModelEntry]:
        return await asyncio.to_thread(self._entries)

    def _entries(self) -> list[ModelEntry]:
        with self._connect() as db:
            rows = db.execute("SELECT entry, last_used_at FROM catalog ORDER BY name").fetchall()
        return [self._entry(row) for row in rows]

    async def touch(self, name: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._execute, "UPDATE catalog SET last_used_at = ? WHERE name = ?",
                                    (time.time(), name))

    async def remove(self, name: str) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self._execute, "DELETE FROM catalog WHERE name = ?", (name,)) > 0

    def _execute(self, sql: str, params: tuple[object, ...]) -> int:
        with self._connect() as db:
            return db.execute(sql, params).rowcount
