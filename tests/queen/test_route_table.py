"""The queen's routing table: each lazy group's claimed paths agree with its module's routes, no other route
hides under a group's paths, and a group dispatches as Starlette's router would (405, 404) once imported."""

from __future__ import annotations

import importlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from rbee.queen import route_table
from rbee.queen.errors import QueenError, handle_queen_error
from rbee.queen.lazy_routes import LazyRoutes, expanded

GROUPS = {group.module: group for group in route_table.LAZY}


def _paths(routes: list[BaseRoute]) -> list[str]:
    return [route.path for route in routes if isinstance(route, Route)]


@pytest.mark.parametrize("module", sorted(GROUPS))
def test_a_group_claims_every_route_of_its_module_and_nothing_else(module: str) -> None:
    group = GROUPS[module]
    paths = _paths(importlib.import_module(module).routes)
    assert paths, f"{module} has no routes"
    assert [p for p in paths if not group.claims(p)] == []  # a route it does not claim would be unreachable
    for claimed in group.paths:  # every path it claims leads to one of its routes
        assert any(p == claimed or p.startswith(claimed + "/") for p in paths), (module, claimed)


async def test_no_other_route_lies_under_a_groups_paths() -> None:
    table = route_table.routes()
    for group in route_table.LAZY:
        others = [r for r in table if r is not group]
        own = set(_paths(await group.load()))
        hidden = [p for p in _paths(await expanded(others)) if group.claims(p) and p not in own]
        assert hidden == [], (group.module, hidden)


async def test_the_ollama_port_serves_exactly_the_ollama_routes() -> None:
    ollama = [*await route_table.OLLAMA.load(), *await route_table.OLLAMA_MODELS.load()]
    assert set(_paths(ollama)) == route_table.OLLAMA_PATHS


def _rerank_app(routes: list[BaseRoute] | None = None) -> Starlette:
    """The rerank routes (as a lazy group, unless `routes` are given), their errors rendered as the queen's."""
    routes = routes or [LazyRoutes("rbee.queen.rerank_routes", ("/v1/rerank", "/rerank"))]
    return Starlette(routes=routes, exception_handlers={QueenError: handle_queen_error})


async def test_a_wrong_method_under_a_group_is_a_405_that_names_the_allowed_one() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_rerank_app()), base_url="http://q") as client:
        answer = await client.get("/v1/rerank")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"


async def test_a_path_a_group_claims_but_no_route_serves_is_a_404() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_rerank_app()), base_url="http://q") as client:
        assert (await client.post("/v1/rerank/more")).status_code == 404
        assert (await client.post("/v2/rerank")).status_code == 404  # not claimed here: no route at all


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/rerank/"), ("GET", "/v1/rerank"), ("POST", "/rerank/x"),
                                            ("POST", "/v1/rerank")])
async def test_a_group_answers_what_starlettes_router_would_for_its_routes(method: str, path: str) -> None:
    from rbee.queen import rerank_routes

    answers = []
    for app in (_rerank_app(rerank_routes.routes[:2]), _rerank_app()):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://q") as client:
            answer = await client.request(method, path, content=b"{")
        answers.append((answer.status_code, answer.headers.get("location"), answer.headers.get("allow")))
    assert answers[0] == answers[1]
    assert answers[0][0] in (307, 405, 404, 400)  # the eager app's own: a redirect, 405, 404, the handler's 400


def test_a_group_claims_its_paths_and_those_below_them_only() -> None:
    group = LazyRoutes("rbee.queen.key_routes", ("/v1/keys",))
    assert group.claims("/v1/keys") and group.claims("/v1/keys/alice")
    assert not group.claims("/v1/keysmith") and not group.claims("/v1/key")
    assert not group.loaded  # claiming imports nothing
