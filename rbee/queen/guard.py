"""Decide who may call what, before any route runs: the one place the queen's access rules live.

  - `/health` answers everyone (it says only that this is a queen, and its version), and so do the
    dashboard's page and files (`/`, `/ui/...`): they hold no data; what they show comes from the API.
  - Hive registration and heartbeats check the hive's join token in their route; here their body
    must state its length and stay small.
  - A file of a share of the queen's own hive (`GET|HEAD /v1/hive/shares/{id}/files/{index}`, that exact
    shape, rbee/queen/share_routes.py) checks the share's token and the peer's address in its route, as a
    hive does; here it must come without a body (413). No other path is opened by it.
  - A bearer token (or Anthropic's `x-api-key` header) that is the admin token or a live API key
    identifies the caller. An API key may call the inference routes only (CLIENT_PATHS: OpenAI's,
    Responses, Anthropic's Messages); the rest (keys, hives, jobs, shutdown) needs the admin token.
  - Without a credential: refused (401) once the queen has API keys. While it has none, a caller on
    this machine may use the OpenAI routes (CLIENT_PATHS) as `local`, but a peer on the network may not
    (403), and neither may a web page the user happens to open: a request whose `Origin` is not this
    machine, or whose `Host` is not a loopback name (DNS rebinding), gets a 403.
  - Admin is a credential, not an address: every other route (keys, hives, jobs, workers, catalog,
    settings, status, usage, audit, metrics, shutdown, and any path not listed here) needs the admin
    token, or a peer that is the queen's own Unix user (`owner`: it can read the token file anyway),
    found by `peer.peer_of` in /proc/net/tcp; where that cannot be known (no /proc), the token. That
    look-up runs in a thread, and only for such routes called without a valid token.
  - `--insecure-no-auth` lifts all of this.
  - Every body is capped at RBEE_MAX_BODY_MB (413).
  - A request the queen itself sent (it carries X-Rbee-Hop, rbee/common/hop.py) is never a client: 508.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rbee.common import paths, settings
from rbee.common.daemon import is_loopback
from rbee.common.hop import HOP_HEADER
from rbee.hive.shares import FILE_ROUTE
from rbee.queen import peer
from rbee.queen.auth import ANONYMOUS, LOCAL, OWNER, Forbidden, Principal, Unauthorized
from rbee.queen.error_styles import ANTHROPIC_PATHS, style_for
from rbee.queen.errors import QueenError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
HIVE_ONLY_PATHS = frozenset({"/v1/hives/register", "/v1/hives/heartbeat"})
CLIENT_PATHS = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                          "/v1/responses", "/v1/responses/input_tokens", "/v1/rerank", "/rerank", "/v2/rerank",
                          "/infill", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat",
                          "/api/generate", "/api/embed", "/api/embeddings", "/v1/audio/transcriptions",
                          "/v1/audio/translations", "/v1/images/generations", *ANTHROPIC_PATHS})
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/"})  # and the dashboard's files, /ui/...
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_HIVE_REPORT_BYTES = 4 * 2**20  # a report lists models and workers: kilobytes, even for a big hive


_SHARE_FILE = re.compile(FILE_ROUTE)
_HOP_NAME = HOP_HEADER.lower()
_HOP = _HOP_NAME.encode()


class LoopDetected(QueenError):
    status = 508
    code = "loop_detected"


class RequestTooLarge(QueenError):
    status = 413
    code = "request_too_large"


class AdminTokenRequired(Unauthorized):
    code = "admin_token_required"


class UnsupportedMediaType(QueenError):
    status = 415
    code = "unsupported_media_type"


@dataclass(frozen=True)
class Access:
    """How the queen was started, as far as access goes."""

    insecure_no_auth: bool = False


def principal_of(scope: Scope) -> Principal:
    """The caller, as the guard identified it."""
    principal: Principal = scope["state"]["principal"]
    return principal


def _host_name(value: str) -> str:
    try:
        return (urlsplit(f"//{value}").hostname or "").lower()
    except ValueError:  # e.g. "[::1" : not a name this machine answers to
        return ""


def _is_client_path(path: str) -> bool:
    return path in CLIENT_PATHS or path.startswith("/v1/models/")


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _identify(scope: Scope, headers: dict[str, str], access: Access) -> Principal:
    """The caller, or the QueenError that refuses it."""
    keyring = scope["app"].state.queen.keyring
    path = scope["path"]
    token = _bearer(headers.get("authorization", "")) or headers.get("x-api-key", "").strip()  # Anthropic's
    who = keyring.identify(token) if token else None
    if who is not None:
        if not who.is_admin and not _is_client_path(path):
            raise Forbidden(f"An API key may call the OpenAI routes only ({path} is not one); managing the queen "
                            "needs its admin token, which `rbee` on the queen's machine sends for you.")
        return who
    if access.insecure_no_auth:
        return ANONYMOUS
    if keyring.has_keys():
        raise Unauthorized("This queen requires an API key: send `Authorization: Bearer <key>` (or `x-api-key`) "
                           "(`rbee key create --name NAME` on the queen's machine makes one)."
                           if not token else "The API key is not valid.")
    _check_local(scope, headers)
    return LOCAL


def _check_local(scope: Scope, headers: dict[str, str]) -> None:
    """A caller without a credential, while the queen has no API keys, must be on this machine and not a web
    page it happens to show (another origin, a DNS-rebound name); else a 403."""
    client = scope.get("client")
    address: str | None = client[0] if client is not None else None
    if address is not None and not is_loopback(address):
        raise Forbidden(f"{address} is not this machine: over the network this queen answers its hives only. "
                        "To serve the network, create an API key (`rbee key create`) and start the queen with "
                        "--host; or use it through an SSH tunnel.", code="forbidden_origin")
    host = headers.get("host")
    origin = headers.get("origin")
    if host is not None and _host_name(host) not in LOOPBACK_NAMES:
        raise Forbidden(f"Host {host!r} is not this machine; the queen answers to localhost only",
                        code="forbidden_origin")
    # Any Origin but the queen's own, "null" included (sandboxed frames, file:// pages), is another web page:
    # another program's page on localhost:OTHER_PORT too.
    if origin is not None and not _is_own_origin(origin, host, scope):
        raise Forbidden(f"cross-origin requests from {origin} are refused", code="forbidden_origin")
    # A browser says where a request comes from even when it sends no Origin (an <img>, a no-cors GET):
    # "same-site" is another port of localhost too.
    fetched_from = headers.get("sec-fetch-site")
    if fetched_from is not None and fetched_from not in ("same-origin", "none"):
        raise Forbidden(f"requests from other web pages ({fetched_from}) are refused", code="forbidden_origin")


def _is_own_origin(origin: str, host: str | None, scope: Scope) -> bool:
    """Whether a browser's `Origin` is the queen's own page: a loopback name, on the port the queen listens
    on (or the one the browser connected to, as `Host` says: an SSH tunnel's)."""
    try:
        parts = urlsplit(origin)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        own = {(scope.get("server") or ("", None))[1]}
        if host is not None:
            own.add(urlsplit(f"//{host}").port or DEFAULT_PORTS.get(scope.get("scheme", "http")))
    except ValueError:  # a port that is not a number, or out of range
        return False
    return (parts.hostname or "").lower() in LOOPBACK_NAMES and port is not None and port in own


def _check_json_body(method: str, headers: dict[str, str]) -> None:
    """A body sent to a route that manages the queen must say it is JSON: a web page can send `text/plain`
    (or a form) without asking first, never `application/json`."""
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    if method in ("GET", "HEAD") or not has_body:
        return
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise UnsupportedMediaType(f"A request body for the queen's admin routes must be JSON, sent with "
                                   f"`Content-Type: application/json` (not {kind or 'none'!r}).")


def _peer_is_queen_user(scope: Scope) -> bool:
    """Whether the client is a process of the queen's own Unix user (but not the queen itself)."""
    client, server = scope.get("client"), scope.get("server")
    if not client or not server:
        return False
    found = peer.peer_of((str(client[0]), int(client[1])), (str(server[0]), int(server[1])))
    return found is not None and found.uid == os.geteuid() and not peer.held_here(found.inode)


async def as_owner(scope: Scope) -> Principal:
    """The caller, `owner` when it is `local` but a process of the queen's own user (asked once per request)."""
    state = scope.setdefault("state", {})
    principal: Principal = state["principal"]
    if principal is LOCAL and not state.get("peer_checked"):
        state["peer_checked"] = True
        if await anyio.to_thread.run_sync(_peer_is_queen_user, scope):
            principal = state["principal"] = OWNER
    return principal


def _admin_token_required(path: str) -> AdminTokenRequired:
    return AdminTokenRequired(
        f"{path} manages the queen: it needs the queen's admin token (`Authorization: Bearer` with the "
        f"contents of {paths.admin_token_file()} on the queen's machine, which `rbee` sends for the queen's own "
        "user), or a request from that user. Without it, this machine may use the OpenAI routes only.")


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive`, raising 413 once the body passes `limit` bytes (for bodies sent without a length)."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge(f"The request body is larger than {limit} bytes (RBEE_MAX_BODY_MB).")
        return message

    return bounded


class Guard:
    def __init__(self, app: ASGIApp, access: Access | None = None) -> None:
        self.app = app
        self.access = access or Access()
        self.max_body = settings.max_body_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"host", b"origin", b"content-length", b"authorization", b"content-type",
                            b"transfer-encoding", b"sec-fetch-site", b"x-api-key", _HOP)}
        try:
            principal = await self._admit(scope, headers)
        except QueenError as exc:
            await _refuse(exc, scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, _bounded(receive, self.max_body), send)

    async def _admit(self, scope: Scope, headers: dict[str, str]) -> Principal:
        """The caller, or the QueenError that refuses it: a hop is a loop; an unguarded route (`_unguarded`)
        answers anyone; every other route needs a caller (`_caller`); any body within RBEE_MAX_BODY_MB."""
        if _HOP_NAME in headers:
            raise LoopDetected("This request comes from a queen (it carries X-Rbee-Hop): a worker or hive address "
                               "leads back to a queen. The hive that reported it is misconfigured or hostile.")
        principal = _unguarded(scope, headers)
        if principal is None:
            principal = await self._caller(scope, headers)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise RequestTooLarge(f"The request body ({length} bytes) is larger than {self.max_body} bytes "
                                  "(RBEE_MAX_BODY_MB).")
        return principal

    async def _caller(self, scope: Scope, headers: dict[str, str]) -> Principal:
        """Who calls a guarded route: a management route wants a JSON body and, from `local`, the queen's own
        user (`owner`)."""
        path = scope["path"]
        if not _is_client_path(path):
            _check_json_body(scope["method"], headers)
        principal = _identify(scope, headers, self.access)
        if principal is LOCAL and not _is_client_path(path):
            scope.setdefault("state", {})["principal"] = principal
            principal = await as_owner(scope)
            if principal is LOCAL:
                raise _admin_token_required(path)
        return principal


def _unguarded(scope: Scope, headers: dict[str, str]) -> Principal | None:
    """`ANONYMOUS` for the routes that check their callers themselves (hive reports: a bounded body; a share's
    files: no body) or need none (OPEN_PATHS, the dashboard's files); None for every other route."""
    path = scope["path"]
    length = headers.get("content-length", "")
    if path in HIVE_ONLY_PATHS:  # the route checks the join token, after reading the body: bound it
        client = scope.get("client")
        if client is not None and not is_loopback(client[0]) and not (
                length.isdigit() and int(length) <= MAX_HIVE_REPORT_BYTES):
            raise RequestTooLarge(f"a hive report must state its length and be at most "
                                  f"{MAX_HIVE_REPORT_BYTES} bytes")
        return ANONYMOUS
    if scope["method"] in ("GET", "HEAD") and _SHARE_FILE.fullmatch(path):
        if length not in ("", "0") or "transfer-encoding" in headers:
            raise RequestTooLarge("a share's file is read with a GET without a body")
        return ANONYMOUS
    if path in OPEN_PATHS or path.startswith("/ui/"):
        return ANONYMOUS
    return None


async def _refuse(exc: QueenError, scope: Scope, receive: Receive, send: Send) -> None:
    """The refusal, in the style of the API the path belongs to; a 401 says to send a bearer token."""
    headers_out = dict(exc.headers)
    if exc.status == 401:
        headers_out["WWW-Authenticate"] = "Bearer"
    await style_for(scope["path"]).response(exc.status, exc.message, param=exc.param, code=exc.code,
                                            headers=headers_out)(scope, receive, send)
