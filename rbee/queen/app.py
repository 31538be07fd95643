"""The queen's ASGI app: routes, error rendering, and start-up/shut-down of what it holds."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from rbee.queen import route_table
from rbee.queen.errors import QueenError, handle_http_exception, handle_queen_error, handle_unexpected
from rbee.queen.guard import Access, Guard
from rbee.queen.ollama_port import OllamaPort
from rbee.queen.state import QueenState


def create_app(state: QueenState | None = None, on_shutdown: Callable[[], None] | None = None,
               access: Access | None = None, ollama_port: int | None = None, queen_port: int | None = None,
               ) -> Starlette:
    """The queen's app; `ollama_port`: a second port it listens on, where it serves the Ollama API only."""
    queen = state or QueenState.create()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await queen.start()
        try:
            yield
        finally:
            await queen.close()
            if on_shutdown:
                on_shutdown()

    app = Starlette(
        routes=route_table.routes(),
        exception_handlers={QueenError: handle_queen_error, HTTPException: handle_http_exception,
                            Exception: handle_unexpected},
        # OllamaPort only where there is an Ollama port: one layer fewer on every request otherwise
        middleware=[*([Middleware(OllamaPort, port=ollama_port, queen_port=queen_port)] if ollama_port else []),
                    Middleware(Guard, access=access)],
        lifespan=lifespan,
    )
    app.state.queen = queen
    return app
