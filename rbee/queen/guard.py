"""Refuse requests a browser was tricked into sending.

A queen on 127.0.0.1 without keys trusts the local machine, not every web page its user opens:
a cross-origin page can POST to localhost, and a DNS-rebinding page can even read the answers.
So a request whose `Origin` is not the local machine, or whose `Host` is not a loopback name,
gets a 403 before it reaches any route.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.queen.errors import error_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_name(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "").lower()


class LocalOnlyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                       if k in (b"host", b"origin")}
            host = headers.get("host")
            origin = headers.get("origin")
            problem = None
            if host is not None and _host_name(host) not in LOOPBACK_NAMES:
                problem = f"Host {host!r} is not this machine; the queen answers to localhost only"
            elif origin not in (None, "null") and (urlsplit(origin).hostname or "") not in LOOPBACK_NAMES:
                problem = f"cross-origin requests from {origin} are refused"
            if problem:
                await error_response(403, problem, code="forbidden_origin")(scope, receive, send)
                return
        await self.app(scope, receive, send)
