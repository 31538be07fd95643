"""A hive's side of a copy to another hive: short-lived shares of one catalog entry's files.

The queen opens a share (`POST /v1/hive/shares`, with this hive's join token) for one model and one peer
address; the answer holds a random token. The peer then reads each file with
`GET /v1/hive/shares/{share_id}/files/{index}` (Range resumes; 206 + Content-Range), presenting that token.
What a share may serve:

    only the files of its catalog entry (by index: no name or path comes from the caller);
    downloaded files ("hf" entries) only when they lie inside this hive's models folder, symlinks resolved;
    files the user added by path (`rbee infer -m ./x.gguf`) wherever they are: the user chose them;
    only to the address the queen named, until it expires.

Refusals: no or wrong token, an unknown or expired share -> 401; another address -> 403. The token is kept
as a digest. A file without a sha256 in the catalog (one added by path) is hashed once, in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from rbee.common import settings
from rbee.common.daemon import same_address
from rbee.common.error_responses import error_response
from rbee.common.jobs import JobFailed
from rbee.contracts.copies import ShareFile, ShareOpen, ShareOpened
from rbee.contracts.models import ModelEntry
from rbee.hive.downloads import sha256_of

log = logging.getLogger(__name__)

MAX_SHARES = 64
FILE_ROUTE = r"^/v1/hive/shares/share-[0-9a-f]{16}/files/[0-9]{1,4}$"
"""The one route a share's token opens; every other route of the hive still needs the join token."""


class _File(FileResponse):
    chunk_size = 1 << 20  # fewer thread hops than the default 64 KiB: a copy runs at the link's speed


@dataclass(frozen=True)
class Share:
    id: str
    digest: bytes
    peer: str
    expires_at: float
    paths: list[Path]
    files: list[ShareFile]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def shared_files(entry: ModelEntry, models: Path) -> list[tuple[Path, str]]:
    """(file, name it lands under on the peer) for each file of `entry`; `JobFailed` for one it may not share."""
    root = models.resolve()
    found: list[tuple[Path, str]] = []
    for raw in entry.files or [entry.path]:
        path = Path(raw).resolve()
        if not path.is_file():
            raise JobFailed(f"{raw} of '{entry.name}' is gone from this hive")
        if path.is_relative_to(root):
            found.append((path, str(path.relative_to(root))))
        elif entry.source != "hf":  # added by path: the user chose it; it lands in the peer's copies folder
            found.append((path, f"copies/{entry.name.replace('/', '--')}/{path.name}"))
        else:
            raise JobFailed(f"{raw} of '{entry.name}' lies outside this hive's models folder {root}; not shared")
    return found


def _known_sha(entry: ModelEntry, path: Path) -> str | None:
    for key, value in entry.sha256.items():
        if str(path).endswith("/" + key.lstrip("/")) or str(path) == key:
            return value
    return None


class Shares:
    def __init__(self) -> None:
        self._shares: dict[str, Share] = {}
        self._hashes: dict[tuple[str, int, float], str] = {}  # (path, size, mtime) -> sha256

    async def open(self, entry: ModelEntry, asked: ShareOpen) -> ShareOpened:
        now = time.monotonic()
        self._shares = {k: s for k, s in self._shares.items() if s.expires_at > now}
        if len(self._shares) >= MAX_SHARES:
            raise JobFailed(f"this hive already has {MAX_SHARES} open shares; try again in a while")
        found = await asyncio.to_thread(shared_files, entry, settings.models_dir())
        files = [ShareFile(name=name, size=(await asyncio.to_thread(path.stat)).st_size,
                           sha256=_known_sha(entry, path) or await self._sha256(path)) for path, name in found]
        token = secrets.token_urlsafe(32)
        share = Share(id=f"share-{secrets.token_hex(8)}", digest=_digest(token), peer=asked.peer_address,
                      expires_at=now + asked.expires_s, paths=[p for p, _ in found], files=files)
        self._shares[share.id] = share
        log.info("sharing %s (%d file(s)) with %s as %s for %.0f s", entry.name, len(files), share.peer,
                 share.id, asked.expires_s)
        return ShareOpened(share_id=share.id, token=SecretStr(token), entry=entry, files=files)

    async def _sha256(self, path: Path) -> str:
        stat = await asyncio.to_thread(path.stat)
        key = (str(path), stat.st_size, stat.st_mtime)
        if key not in self._hashes:
            self._hashes[key] = await asyncio.to_thread(sha256_of, path)
        return self._hashes[key]

    def serve(self, request: Request) -> Response:
        """A file of a share, to the peer it was opened for, with the share's token (Range: 206)."""
        client = request.client.host if request.client else "?"
        share = self._shares.get(request.path_params["share_id"])
        given = request.headers.get("authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if share is None or share.expires_at <= time.monotonic() or not token or \
                not hmac.compare_digest(_digest(token), share.digest):
            log.warning("refused a share file to %s: %s", client, "no token" if not token else
                        "unknown or expired share" if share is None or share.expires_at <= time.monotonic()
                        else "wrong token")
            return error_response(401, "A valid share token is required.", code="invalid_token")
        if not same_address(client, share.peer):
            log.warning("refused %s to %s: it was opened for %s", share.id, client, share.peer)
            return error_response(403, "This share is for another address.", code="forbidden")
        index = int(request.path_params["index"])
        if index >= len(share.paths):
            return error_response(404, f"{share.id} has {len(share.paths)} file(s).", code="not_found")
        return _File(share.paths[index], media_type="application/octet-stream")
