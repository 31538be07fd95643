"""Refuse requests the queen must not serve, before they reach any route.

A queen without API keys trusts the local machine, not the network and not every web page its
user opens:
  - a peer on another machine may only call the hive routes (registration and heartbeats), which
    check the hive's join token; everything else answers 403 (a queen with enrolled hives listens
    on the network for them);
  - a cross-origin page can POST to localhost, and a DNS-rebinding page can even read the answers,
    so a request whose `Origin` is not the local machine, or whose `Host` is not a loopback name,
    gets a 403 too.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.queen.errors import error_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
HIVE_ONLY_PATHS = frozenset({"/v1/hives/register", "/v1/hives/heartbeat"})
MAX_HIVE_REPORT_BYTES = 4 * 2**20  # a report lists models and workers: kilobytes, even for a big hive


def _host_name(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "").lower()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _problem(scope: Scope) -> tuple[int, str] | None:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
               if k in (b"host", b"origin", b"content-length")}
    client = scope.get("client")
    remote = client is not None and not _is_loopback(client[0])
    if scope["path"] in HIVE_ONLY_PATHS:  # the route checks the join token, after reading the body: bound it first
        length = headers.get("content-length", "")
        if remote and not (length.isdigit() and int(length) <= MAX_HIVE_REPORT_BYTES):
            return 413, f"a hive report must state its length and be at most {MAX_HIVE_REPORT_BYTES} bytes"
        return None
    if remote:
        return 403, (f"{client[0]} is not this machine: over the network this queen answers its hives only. "
                     "Use the API from the queen's machine (or through an SSH tunnel).")
    host = headers.get("host")
    origin = headers.get("origin")
    if host is not None and _host_name(host) not in LOOPBACK_NAMES:
        return 403, f"Host {host!r} is not this machine; the queen answers to localhost only"
    if origin not in (None, "null") and (urlsplit(origin).hostname or "") not in LOOPBACK_NAMES:
        return 403, f"cross-origin requests from {origin} are refused"
    return None


class LocalOnlyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _problem(scope)
            if problem:
                status, message = problem
                code = "forbidden_origin" if status == 403 else "request_too_large"
                await error_response(status, message, code=code)(scope, receive, send)
                return
        await self.app(scope, receive, send)
