"""The Ollama API on a port of its own as well (RBEE_OLLAMA_PORT, e.g. 11434, Ollama's; off by default), for
clients that only know Ollama's address: the same app, the same guard and keys, but on that port only the
Ollama routes and `/`; any other path there is a 404 that points at the queen's port."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.queen.error_styles import OLLAMA
from rbee.queen.route_table import OLLAMA_PATHS

SERVED = frozenset({"/", *OLLAMA_PATHS})


class OllamaPort:
    """Only the Ollama routes (and `/`) for requests that came in on `port`."""

    def __init__(self, app: ASGIApp, port: int | None = None, queen_port: int | None = None) -> None:
        self.app = app
        self.port = port
        self.queen_port = queen_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") or ("", None)
        if scope["type"] == "http" and self.port is not None and server[1] == self.port and \
                scope["path"] not in SERVED:
            elsewhere = f"on the queen's port ({self.queen_port})" if self.queen_port else "on the queen's port"
            await OLLAMA.response(404, f"Port {self.port} serves the Ollama API only (/api/...); {scope['path']} is "
                                       f"{elsewhere}.")(scope, receive, send)
            return
        await self.app(scope, receive, send)
