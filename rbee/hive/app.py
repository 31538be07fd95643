"""A remote hive's HTTP API: what the queen calls to resolve models and start or stop workers.

Every route needs the hive's join token as a Bearer credential: the queen holds it, nobody else.
Inference never passes here; the queen talks to the workers directly with their own keys.

    GET    /v1/hive/report              HiveReport: everything the queen keeps of this hive
    GET    /metrics                     Prometheus metrics of this hive, its workers and their engines

and the routes of each concern, listed in its module:

    rbee/hive/model_routes.py    resolve, pulls and their jobs, a model's detail and removal, shares, fetches
    rbee/hive/worker_routes.py   workers started and stopped, their saved slots, a fronted worker's engine
    rbee/hive/spread_routes.py   link echoes and measures, spreads' RPC channels and rpc-servers

Two routes are not guarded by the join token alone: rbee/hive/shares.py checks a share's own token and the
peer's address on the share file route, and rbee/hive/front.py takes the worker's key (or the join token).
A link echo is no route: rbee/hive/links.py checks its token and peer on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.common import supervise
from rbee.common.error_responses import error_response
from rbee.common.jobs import JobRunner
from rbee.common.metrics import ColonyCollector, engine_metrics
from rbee.common.prom import CONTENT_TYPE, CollectorRegistry, generate_latest
from rbee.hive import front, links, model_refs, model_routes, shares, spread_routes, worker_routes
from rbee.hive.api_util import Refusal, hive_of, refused
from rbee.hive.config import HiveConfig
from rbee.hive.models_file import CHECK_INTERVAL_S
from rbee.hive.queen_link import QueenLink
from rbee.hive.service import Hive

log = logging.getLogger(__name__)


_SHARE_FILE = re.compile(shares.FILE_ROUTE)
_FRONT = re.compile(front.ROUTE)


class TokenGuard:
    """401 for any request without the hive's token; the refusal is logged with the caller's address."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        share_file = scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and \
            _SHARE_FILE.fullmatch(scope["path"])
        if scope["type"] == "http" and not share_file and not _FRONT.fullmatch(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                client = scope.get("client") or ("?", 0)
                log.warning("refused %s %s from %s: %s", scope["method"], scope["path"], client[0],
                            "wrong token" if given else "no token")
                await error_response(401, "This hive answers only its queen: a valid join token is required.",
                                     code="invalid_token")(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def report(request: Request) -> Response:
    return JSONResponse((await hive_of(request).report(request.app.state.port)).model_dump(mode="json"))


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this hive: its workers, its memory, and its workers' own."""
    hive = hive_of(request)
    registry = CollectorRegistry()
    registry.register(ColonyCollector([hive]))
    engines = await engine_metrics(hive.supervisor.workers(), hive.tls.client_context() if hive.tls else None)
    return Response(generate_latest(registry) + engines.encode(), media_type=CONTENT_TYPE)


def create_app(config: HiveConfig, hive: Hive | None = None,
               on_shutdown: Callable[[], None] | None = None) -> Starlette:
    hive = hive or Hive(config.alias, address=config.address, tls=config.tls_files())
    hive.front = front.hive_url(config.address, config.port, config.tls)
    link = QueenLink(hive, config)
    jobs = JobRunner()
    engine_front = front.EngineFront(config.token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await model_refs.models_file.refresh()  # read before the first request; the models-toml loop keeps it current
        await hive.start()
        tasks = [supervise.start("queen-link", link.run), supervise.start("models-toml", supervise.every(
            lambda: CHECK_INTERVAL_S, model_refs.models_file.refresh))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            app.state.echoes.close_all()
            await jobs.close()
            await hive.close()
            await engine_front.close()
            if on_shutdown:
                on_shutdown()

    app = Starlette(
        routes=[
            Route("/v1/hive/report", report, methods=["GET"]),
            *worker_routes.routes, *model_routes.routes, *spread_routes.routes,
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={Refusal: refused},
        lifespan=lifespan,
    )
    app.add_middleware(TokenGuard, token=config.token)
    app.state.hive = hive
    app.state.port = config.port
    app.state.link = link
    app.state.jobs = jobs
    app.state.echoes = links.Echoes(hive.address, hive.tls)
    app.state.front = engine_front
    app.state.queen_url = config.queen_url.rstrip("/")
    return app
