"""Route groups imported on their first request: a route module of a rarely used API (Ollama's, Anthropic's,
images, keys...) costs an idle queen nothing until a request under one of its paths arrives.

A `LazyRoutes` stands in the app's routing table where the module's routes would, and claims every request
whose path is one of its `paths` or lies below one (`/v1/keys` claims `/v1/keys/NAME`). On the first such
request it imports the module (in a thread: the import reads and compiles files) and from then on dispatches
as Starlette's router does: the first route that matches fully, else the first that matches the path but not
the method (a 405), else a redirect to the path with its trailing slash added or taken away if that matches, else
a 404. The paths it claims are written beside it in `route_table`, and a test checks
that they and the module's routes agree, so a route cannot become unreachable unnoticed.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import URL, URLPath
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

__all__ = ["LazyRoutes", "expanded"]


class LazyRoutes(BaseRoute):
    """The `routes` list of `module`, imported when a request first falls under one of `paths`."""

    def __init__(self, module: str, paths: Sequence[str]) -> None:
        self.module = module
        self.paths = tuple(paths)
        self._routes: list[BaseRoute] | None = None

    def claims(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.paths)

    @property
    def loaded(self) -> bool:
        return self._routes is not None

    async def load(self) -> list[BaseRoute]:
        """The module's routes, importing it the first time."""
        if self._routes is None:
            module = await asyncio.to_thread(importlib.import_module, self.module)
            self._routes = list(module.routes)
        return self._routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and self.claims(scope["path"]):
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        routes = await self.load()
        found = _route(scope, routes)
        if found is not None:
            scope.update(found[1])
            await found[0].handle(scope, receive, send)
            return
        path = scope["path"]  # as Starlette's router: the path with its trailing slash added or taken away
        other = {**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
        if path != "/" and any(route.matches(other)[0] is not Match.NONE for route in routes):
            await RedirectResponse(url=str(URL(scope=other)))(scope, receive, send)
            return
        raise HTTPException(status_code=404)  # as Starlette's router does inside an app

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        for route in self._routes or ():  # a group never requested has no names yet
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)

    def __repr__(self) -> str:
        return f"LazyRoutes({self.module!r}, {self.paths!r})"


def _route(scope: Scope, routes: Sequence[BaseRoute]) -> tuple[BaseRoute, Scope] | None:
    """The first route that matches fully, else the first that matches the path but not the method (a 405)."""
    partial: tuple[BaseRoute, Scope] | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child
        if match is Match.PARTIAL and partial is None:
            partial = route, child
    return partial


async def expanded(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """`routes` with each lazy group replaced by its routes (importing those not loaded yet): the whole table,
    for what describes every route (`/openapi.json`)."""
    out: list[BaseRoute] = []
    for route in routes:
        out.extend(await route.load() if isinstance(route, LazyRoutes) else [route])
    return out
