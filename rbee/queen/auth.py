"""Who is calling: the admin token, API keys, and what each may do.

    admin    the bearer of the queen's admin token (a file only its user can read; `rbee` sends it)
    owner    no credential, from a process of the queen's own Unix user on this machine, while the queen
             has no API keys: that user can read the admin token anyway, so it may do what the admin does
    key      an API key made by `rbee key create`: the OpenAI routes only, maybe only some models,
             maybe rate-limited
    local    no credential, from this machine, while the queen has no API keys (zero-config use): the
             OpenAI routes, by model name; not an admin

Keys live in SQLite as digests; the queen keeps them in memory too, so checking one costs a dict
lookup, not a query. Creating or revoking a key goes through `Keyring`, which updates both.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rbee.common import paths
from rbee.contracts.keys import KeyCreate, KeyCreated, KeyInfo
from rbee.hive.model_refs import looks_like_path
from rbee.queen.db import QueenDB, StoredKey, digest
from rbee.queen.errors import NotFound, QueenError

WINDOW_S = 60.0
AUDIO_TOKENS_PER_SECOND = 10  # what a second of transcribed or translated audio counts against a key's tpm
IMAGE_TOKENS = 1024  # what one drawn image counts against a key's tpm, whatever its size


class Unauthorized(QueenError):
    status = 401
    code = "invalid_api_key"


class Forbidden(QueenError):
    status = 403
    code = "forbidden"


class RateLimited(QueenError):
    status = 429
    code = "rate_limit_exceeded"


@dataclass(frozen=True)
class Principal:
    actor: str  # 'admin', 'owner', 'local', 'anonymous' (--insecure-no-auth) or 'key:NAME'
    key: KeyInfo | None = None

    @property
    def is_admin(self) -> bool:
        return self.key is None and self.actor != "local"

    @property
    def usage_name(self) -> str:
        return self.key.name if self.key else f"({self.actor})"


ADMIN = Principal("admin")
OWNER = Principal("owner")
LOCAL = Principal("local")
ANONYMOUS = Principal("anonymous")


def read_or_create_admin_token(path: Path) -> str:
    """The admin token in `path`, made (mode 600) on the queen's first start."""
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    token = "rbee-admin-" + secrets.token_urlsafe(32)
    paths.write_private(path, (token + "\n").encode())
    return token


@dataclass
class _Window:
    """Requests and tokens spent in the last minute, for one key."""

    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def trim(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


class Keyring:
    """The admin token and the API keys, checked in memory; changes are written to SQLite first."""

    def __init__(self, db: QueenDB, admin_token: str) -> None:
        self._db = db
        self._admin_digest = digest(admin_token)
        self._keys: dict[str, StoredKey] = {k.secret_sha256: k for k in db.stored_keys()}
        self._windows: dict[str, _Window] = {}

    def has_keys(self) -> bool:
        """Whether any key can still be used (then every /v1 request needs a credential)."""
        now = time.time()
        return any(_usable(k.info, now) for k in self._keys.values())

    def identify(self, token: str) -> Principal | None:
        """The principal a bearer token stands for; None for an unknown one; 401 for a dead key."""
        hashed = digest(token)
        if hmac.compare_digest(hashed, self._admin_digest):
            return ADMIN
        stored = self._keys.get(hashed)
        if stored is None:
            return None
        info = stored.info
        if info.revoked_at is not None:
            raise Unauthorized(f"The API key '{info.name}' was revoked; ask for a new one.")
        if info.expires_at is not None and info.expires_at <= time.time():
            raise Unauthorized(f"The API key '{info.name}' expired on {time.ctime(info.expires_at)}; "
                               "ask for a new one.")
        return Principal(f"key:{info.name}", info)

    async def create(self, spec: KeyCreate) -> KeyCreated:
        created, stored = await self._db.create_key(spec)
        self._keys[stored.secret_sha256] = stored
        return created

    async def revoke(self, name: str) -> KeyInfo:
        found = [k for k in self._keys.values() if k.info.name == name]
        if not found:
            raise NotFound(f"There is no API key named '{name}'; `rbee key list` shows them.")
        stored = found[0]
        if stored.info.revoked_at is None:
            at = time.time()
            await self._db.revoke_key(name, at)
            stored = StoredKey(stored.info.model_copy(update={"revoked_at": at}), stored.secret_sha256)
            self._keys[stored.secret_sha256] = stored
        return stored.info

    def admit(self, who: Principal, model: str) -> None:
        """Check that `who` may send a request for `model` now, and count it against the key's limits."""
        key = who.key
        if key is None:
            return
        if looks_like_path(model.strip()):  # stripped as the model name parser strips it
            raise Forbidden(f"An API key may use models by name only, not by file path ({model!r}); "
                            "`GET /v1/models` lists them.", param="model", code="model_not_allowed")
        if key.models is not None and model not in key.models:
            raise Forbidden(f"The API key '{key.name}' may not use the model '{model}' (it may use: "
                            f"{', '.join(key.models)}).", param="model", code="model_not_allowed")
        if key.rpm is None and key.tpm is None:
            return
        now = time.monotonic()
        window = self._windows.setdefault(key.name, _Window())
        window.trim(now)
        if key.rpm is not None and len(window.requests) >= key.rpm:
            wait = window.requests[0] + WINDOW_S - now
            raise _limited(f"The API key '{key.name}' is limited to {key.rpm} requests per minute.", wait)
        if key.tpm is not None and window.token_sum >= key.tpm:
            wait = window.tokens[0][0] + WINDOW_S - now
            raise _limited(f"The API key '{key.name}' is limited to {key.tpm} tokens per minute.", wait)
        window.requests.append(now)

    def spent(self, who: Principal, tokens: int, audio_s: float = 0.0, images: int = 0) -> None:
        """Count tokens a finished request used against its key's per-minute budget, its seconds of audio as
        AUDIO_TOKENS_PER_SECOND tokens each (rounded up), and its images as IMAGE_TOKENS each."""
        tokens += math.ceil(audio_s * AUDIO_TOKENS_PER_SECOND) + images * IMAGE_TOKENS
        if who.key is None or who.key.tpm is None or tokens <= 0:
            return
        window = self._windows.setdefault(who.key.name, _Window())
        window.tokens.append((time.monotonic(), tokens))
        window.token_sum += tokens


def _usable(info: KeyInfo, now: float) -> bool:
    return info.revoked_at is None and (info.expires_at is None or info.expires_at > now)


def _limited(message: str, wait_s: float) -> RateLimited:
    seconds = max(1, math.ceil(wait_s))
    return RateLimited(f"{message} Retry in {seconds} s.", headers={"Retry-After": str(seconds)})
