"""The queen's SQLite database: enrolled hives, API keys, usage counters and the audit log.

Secrets (join tokens, API keys) are stored as SHA-256 digests: they are long random strings, so a
plain digest is enough, and the secret itself is shown once. Every async method runs its SQL in a
thread (sqlite3 blocks). A locked database answers 503 and changes nothing; a damaged one stops
the queen at start with the recovery steps (see the README, "When the queen's database is damaged").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rbee.common import paths
from rbee.contracts.keys import KEY_PREFIX, AuditEntry, KeyCreate, KeyCreated, KeyInfo, KeyUsage
from rbee.queen.errors import QueenError

T = TypeVar("T")

LOCK_TIMEOUT_S = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hives (
    alias TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    address TEXT,
    certificate TEXT
);
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    last_used_at REAL,
    models TEXT,
    rpm INTEGER,
    tpm INTEGER
);
CREATE TABLE IF NOT EXISTS usage (
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    audio_seconds REAL NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, model)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class QueenDBError(RuntimeError):
    """The queen's database cannot be opened; the message says where and what to do."""


class DatabaseBusy(QueenError):
    status = 503
    code = "database_busy"


class DatabaseFailed(QueenError):
    status = 503
    code = "database_error"


@dataclass(frozen=True)
class Enrolment:
    alias: str
    enrolled_at: float
    address: str | None = None  # where the installer reached it; its reports must come from there
    certificate: str | None = None  # the PEM the cluster CA issued to it: the only one the queen accepts from it


@dataclass(frozen=True)
class StoredKey:
    """What the queen keeps in memory to check a key on every request without touching SQLite."""

    info: KeyInfo
    secret_sha256: str


@dataclass(frozen=True)
class UsageDelta:
    name: str
    model: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    images: int = 0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _recovery(path: Path) -> str:
    return (f"Recover: stop the queen, `mv {path} {path}.damaged`, and start it again (an empty database); "
            f"then create the API keys again and re-run `rbee hive install ALIAS` for each hive. "
            f"`sqlite3 {path}.damaged .recover` may rescue the old rows.")


def _migrate(db: sqlite3.Connection) -> None:
    """Columns added after a table was first made (a queen's database outlives its version)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(hives)")}
    for column in ("address", "certificate"):
        if column not in columns:
            db.execute(f"ALTER TABLE hives ADD COLUMN {column} TEXT")
    usage_columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
    if "audio_seconds" not in usage_columns:
        db.execute("ALTER TABLE usage ADD COLUMN audio_seconds REAL NOT NULL DEFAULT 0")
    if "images" not in usage_columns:
        db.execute("ALTER TABLE usage ADD COLUMN images INTEGER NOT NULL DEFAULT 0")


def _key_info(row: sqlite3.Row) -> KeyInfo:
    return KeyInfo(name=row["name"], prefix=row["prefix"], created_at=row["created_at"],
                   expires_at=row["expires_at"], revoked_at=row["revoked_at"], last_used_at=row["last_used_at"],
                   models=json.loads(row["models"]) if row["models"] else None, rpm=row["rpm"], tpm=row["tpm"])


class QueenDB:
    def __init__(self, path: Path) -> None:
        paths.touch_private(path)  # keys' digests, usage and the audit: the queen's user's only
        self.path = path
        try:
            with contextlib.closing(self._connect()) as db, db:
                check = db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {check}")
                db.executescript(_SCHEMA)
                _migrate(db)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise QueenDBError(f"the queen's database {path} is locked by another program ({exc}); "
                                   "close it (an open `sqlite3` shell?) and start the queen again") from exc
            raise QueenDBError(f"the queen's database {path} is unusable ({exc}). {_recovery(path)}") from exc
        except sqlite3.DatabaseError as exc:
            raise QueenDBError(f"the queen's database {path} is damaged ({exc}). {_recovery(path)}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S)
        db.row_factory = sqlite3.Row
        return db

    def _guarded(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one transaction; a lock or damage becomes a 503 that says what happened."""
        try:
            with contextlib.closing(self._connect()) as db, db:
                return work(db)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise DatabaseBusy(f"The queen's database {self.path} is locked by another program; nothing "
                                   "was changed. Retry in a moment, or close the program holding it.",
                                   headers={"Retry-After": "2"}) from exc
            raise DatabaseFailed(f"The queen's database {self.path} failed ({exc}); nothing was changed.") from exc
        except sqlite3.DatabaseError as exc:
            raise DatabaseFailed(f"The queen's database {self.path} is damaged ({exc}); nothing was changed. "
                                 f"{_recovery(self.path)}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._guarded, work)

    # --- hives -------------------------------------------------------------------------------

    async def enrol(self, alias: str, address: str | None = None, certificate: str | None = None) -> str:
        """A new join token for `alias` (at `address`, where the installer reached it, with the TLS certificate
        it was given); any previous token of that hive stops working."""
        token = secrets.token_urlsafe(32)
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO hives (alias, token_sha256, enrolled_at, address, certificate) "
            "VALUES (?, ?, ?, ?, ?)", (alias, digest(token), time.time(), address, certificate)))
        return token

    async def set_certificate(self, alias: str, certificate: str) -> bool:
        """The certificate a hive now has (`rbee tls rotate`); False when no such hive is enrolled."""
        return await self._run(lambda db: db.execute(
            "UPDATE hives SET certificate = ? WHERE alias = ?", (certificate, alias)).rowcount > 0)

    async def enrolment_for(self, token: str) -> Enrolment | None:
        """The hive a join token belongs to; None for a wrong or revoked one."""
        row = await self._run(lambda db: db.execute(
            "SELECT alias, enrolled_at, address, certificate FROM hives WHERE token_sha256 = ?",
            (digest(token),)).fetchone())
        return None if row is None else Enrolment(str(row[0]), float(row[1]), row[2], row[3])

    async def revoke(self, alias: str) -> bool:
        return await self._run(lambda db: db.execute("DELETE FROM hives WHERE alias = ?", (alias,)).rowcount > 0)

    def enrolments(self) -> list[Enrolment]:
        """Blocking; also used before the event loop runs (to decide where the queen listens)."""
        rows = self._guarded(lambda db: db.execute("SELECT alias, enrolled_at FROM hives ORDER BY alias").fetchall())
        return [Enrolment(alias, at) for alias, at in rows]

    async def hives(self) -> list[Enrolment]:
        return await asyncio.to_thread(self.enrolments)

    # --- API keys ----------------------------------------------------------------------------

    async def create_key(self, spec: KeyCreate) -> tuple[KeyCreated, StoredKey]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(name=spec.name, prefix=secret[:12], created_at=time.time(), expires_at=spec.expires_at,
                       models=spec.models, rpm=spec.rpm, tpm=spec.tpm)

        def insert(db: sqlite3.Connection) -> bool:
            try:
                db.execute("INSERT INTO api_keys (name, prefix, secret_sha256, created_at, expires_at, models, "
                           "rpm, tpm) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (info.name, info.prefix, digest(secret), info.created_at, info.expires_at,
                            json.dumps(info.models) if info.models else None, info.rpm, info.tpm))
            except sqlite3.IntegrityError:
                return False
            return True

        if not await self._run(insert):
            raise KeyExists(f"There is already a key named '{spec.name}'; pick another name, or revoke that "
                            f"one first (`rbee key revoke {spec.name}`).", param="name")
        return KeyCreated(**info.model_dump(), secret=secret), StoredKey(info, digest(secret))

    def stored_keys(self) -> list[StoredKey]:
        """Every key, revoked and expired ones included (blocking: read once at start-up)."""
        rows = self._guarded(lambda db: db.execute("SELECT * FROM api_keys ORDER BY name").fetchall())
        return [StoredKey(_key_info(row), row["secret_sha256"]) for row in rows]

    async def keys(self) -> list[StoredKey]:
        return await asyncio.to_thread(self.stored_keys)

    async def revoke_key(self, name: str, at: float) -> bool:
        return await self._run(lambda db: db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (at, name)).rowcount > 0)

    async def record_usage(self, deltas: list[UsageDelta], last_used: dict[str, float]) -> None:
        """Add counters (one transaction: all of them or none, so a failed flush can be retried whole)."""
        def add(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO usage (name, model, requests, errors, prompt_tokens, completion_tokens, audio_seconds, "
                "images) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, model) DO UPDATE SET "
                "requests = requests + excluded.requests, errors = errors + excluded.errors, "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "audio_seconds = audio_seconds + excluded.audio_seconds, images = images + excluded.images",
                [(d.name, d.model, d.requests, d.errors, d.prompt_tokens, d.completion_tokens, d.audio_seconds,
                  d.images) for d in deltas])
            db.executemany("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE name = ?",
                           [(at, name) for name, at in last_used.items()])
        await self._run(add)

    async def usage(self, name: str | None = None) -> list[KeyUsage]:
        where, args = ("WHERE name = ?", (name,)) if name else ("", ())
        rows = await self._run(lambda db: db.execute(
            f"SELECT * FROM usage {where} ORDER BY name, model", args).fetchall())
        return [KeyUsage(**dict(row)) for row in rows]

    # --- audit -------------------------------------------------------------------------------

    async def audit(self, actor: str, source: str, action: str, target: str, detail: str = "") -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO audit (at, actor, source, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), actor, source, action, target, detail)))

    async def audit_entries(self, limit: int, since: float | None = None, action: str | None = None
                            ) -> list[AuditEntry]:
        clauses: list[str] = ["at >= ?"]
        args: list[float | str] = [since or 0.0]
        if action:
            clauses.append("action LIKE ?")
            args.append(action.replace("*", "%"))
        rows = await self._run(lambda db: db.execute(
            f"SELECT * FROM (SELECT * FROM audit WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?) "
            "ORDER BY id", (*args, limit)).fetchall())
        return [AuditEntry(**dict(row)) for row in rows]

    async def prune_audit(self, older_than: float) -> int:
        """Drop entries older than the retention (the only deletion the audit log allows)."""
        return await self._run(lambda db: db.execute("DELETE FROM audit WHERE at < ?", (older_than,)).rowcount)


class KeyExists(QueenError):
    status = 409
    code = "key_exists"
