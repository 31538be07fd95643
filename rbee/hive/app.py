"""A remote hive's HTTP API: what the queen calls to resolve models and start or stop workers.

Every route needs the hive's join token as a Bearer credential: the queen holds it, nobody else.
Inference never passes here; the queen talks to the workers directly with their own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.common.error_responses import error_response
from rbee.common.jobs import JobFailed
from rbee.common.metrics import ColonyCollector, engine_metrics
from rbee.contracts.hives import HostedWorker, ResolvedModel, ResolveModel, SpawnWorker
from rbee.hive.config import HiveConfig
from rbee.hive.queen_link import QueenLink
from rbee.hive.service import Hive, ModelUnavailable
from rbee.hive.worker import WorkerStartError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class TokenGuard:
    """401 for any request without the hive's token; the refusal is logged with the caller's address."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                client = scope.get("client") or ("?", 0)
                log.warning("refused %s %s from %s: %s", scope["method"], scope["path"], client[0],
                            "wrong token" if given else "no token")
                await error_response(401, "This hive answers only its queen: a valid join token is required.",
                                     code="invalid_token")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _hive(request: Request) -> Hive:
    hive: Hive = request.app.state.hive
    return hive


async def _parse(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Refusal(400, f"Invalid value for '{'.'.join(map(str, first['loc']))}': {first['msg']}") from exc


class _Refusal(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Refusal)
    return error_response(exc.status, exc.message, code=exc.code)


async def report(request: Request) -> Response:
    return JSONResponse((await _hive(request).report(request.app.state.port)).model_dump(mode="json"))


async def resolve(request: Request) -> Response:
    hive = _hive(request)
    asked = await _parse(request, ResolveModel)
    try:
        entry = await hive.resolve(asked.model)
        need = await hive.need(entry, asked)
    except (ModelUnavailable, JobFailed) as exc:
        raise _Refusal(404, str(exc), "model_not_found") from exc
    return JSONResponse(ResolvedModel(entry=entry, need=need).model_dump(mode="json"))


async def spawn(request: Request) -> Response:
    hive = _hive(request)
    asked = await _parse(request, SpawnWorker)
    try:
        entry = await hive.resolve(asked.model)
        worker = await hive.spawn_worker(entry, asked.mode, memory=asked.memory, shape=asked, device=asked.device)
    except ModelUnavailable as exc:
        raise _Refusal(404, str(exc), "model_not_found") from exc
    except (WorkerStartError, JobFailed) as exc:
        raise _Refusal(503, str(exc), "worker_start_failed") from exc
    hosted = HostedWorker(info=worker.info(), api_key=worker.api_key, entry=worker.spec.model)
    return JSONResponse(hosted.model_dump(mode="json"), status_code=201)


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this hive: its workers, its memory, and its workers' own."""
    hive = _hive(request)
    registry = CollectorRegistry()
    registry.register(ColonyCollector([hive]))
    engines = await engine_metrics(hive.supervisor.workers(), hive.tls.client_context() if hive.tls else None)
    return Response(generate_latest(registry) + engines.encode(), media_type=CONTENT_TYPE_LATEST)


async def stop(request: Request) -> Response:
    worker = await _hive(request).supervisor.stop(request.path_params["worker_id"])
    if worker is None:
        raise _Refusal(404, f"There is no worker '{request.path_params['worker_id']}' on this hive.", "not_found")
    return JSONResponse(worker.info().model_dump(mode="json"))


def create_app(config: HiveConfig, hive: Hive | None = None,
               on_shutdown: Callable[[], None] | None = None) -> Starlette:
    hive = hive or Hive(config.alias, address=config.address, tls=config.tls_files())
    link = QueenLink(hive, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hive.start()
        task = asyncio.get_running_loop().create_task(link.run(), name="queen-link")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await hive.close()
            if on_shutdown:
                on_shutdown()

    app = Starlette(
        routes=[
            Route("/v1/hive/report", report, methods=["GET"]),
            Route("/v1/hive/resolve", resolve, methods=["POST"]),
            Route("/v1/hive/workers", spawn, methods=["POST"]),
            Route("/v1/hive/workers/{worker_id}", stop, methods=["DELETE"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={_Refusal: _refused},
        lifespan=lifespan,
    )
    app.add_middleware(TokenGuard, token=config.token)
    app.state.hive = hive
    app.state.port = config.port
    app.state.link = link
    return app
