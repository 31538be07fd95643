"""The queen's own SQLite database: the hives it has enrolled and their join tokens.

Tokens are stored as SHA-256 digests (they are long random secrets, so a plain digest is
enough; the token itself is shown once, to the installer that ships it to the hive).
Every call runs in a thread: sqlite3 blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hives (
    alias TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    enrolled_at REAL NOT NULL
)
"""


class QueenDBError(RuntimeError):
    """The queen's database cannot be read or written; the message says where and what to do."""


@dataclass(frozen=True)
class Enrolment:
    alias: str
    enrolled_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class QueenDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            with self._connect() as db:
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise QueenDBError(f"the queen's database {path} is unusable ({exc}); move it aside and enrol "
                               "the hives again with `rbee hive install ALIAS`") from exc

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5.0)

    def _enrol(self, alias: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO hives (alias, token_sha256, enrolled_at) VALUES (?, ?, ?)",
                       (alias, _digest(token), time.time()))
        return token

    async def enrol(self, alias: str) -> str:
        """A new join token for `alias`; any previous token of that hive stops working."""
        return await asyncio.to_thread(self._enrol, alias)

    def _alias_for(self, token: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT alias FROM hives WHERE token_sha256 = ?", (_digest(token),)).fetchone()
        return None if row is None else str(row[0])

    async def alias_for(self, token: str) -> str | None:
        """The hive a join token belongs to; None for a wrong or revoked one."""
        return await asyncio.to_thread(self._alias_for, token)

    def _revoke(self, alias: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM hives WHERE alias = ?", (alias,)).rowcount > 0

    async def revoke(self, alias: str) -> bool:
        return await asyncio.to_thread(self._revoke, alias)

    def enrolments(self) -> list[Enrolment]:
        """Blocking; also used before the event loop runs (to decide where the queen listens)."""
        with self._connect() as db:
            rows = db.execute("SELECT alias, enrolled_at FROM hives ORDER BY alias").fetchall()
        return [Enrolment(alias, at) for alias, at in rows]

    async def list(self) -> list[Enrolment]:
        return await asyncio.to_thread(self.enrolments)
