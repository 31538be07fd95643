"""A remote hive's HTTP API: what the queen calls to resolve models and start or stop workers.

Every route needs the hive's join token as a Bearer credential: the queen holds it, nobody else.
Inference never passes here; the queen talks to the workers directly with their own keys.

    POST   /v1/hive/pulls               HivePull -> JobCreated: a download, as a job of this hive's
    GET    /v1/hive/jobs/{id}/events    the job's events as SSE (Last-Event-ID resumes), until a terminal one
    DELETE /v1/hive/jobs/{id}           cancel it (a cancelled pull leaves no files behind)
    GET    /v1/hive/models/{name}       ModelDetail (?ctx=&slots=), read here
    DELETE /v1/hive/models/{name}       forget a model, deleting what rbee downloaded or copied
    POST   /v1/hive/shares              ShareOpen -> ShareOpened: serve one model's files to one peer hive
    GET    /v1/hive/shares/{id}/files/{index}   a shared file (Range); the share's token, not the join token
    POST   /v1/hive/fetches             HiveFetch -> JobCreated: copy a model from a peer's share, as a job
    POST   /v1/hive/links/echoes        EchoOpen -> EchoOpened: a TCP echo on a port of its own, for one peer
                                        hive's link measure, for a while (its token; rbee/hive/links.py)
    POST   /v1/hive/links/measure       LinkMeasure -> LinkMeasured: measure the link to a peer hive's echo
    POST   /v1/hive/channels            ChannelOpen -> ChannelInfo: one end of a spread's RPC channel
    DELETE /v1/hive/channels/{id}       close it and its connections (rbee/hive/rpc_channel.py)
    POST   /v1/hive/rpc-servers         RpcServerOpen -> RpcServerInfo: lend devices to a spread (127.0.0.1 only)
    DELETE /v1/hive/rpc-servers/{spread}  stop that spread's rpc-servers (rbee/hive/rpc_servers.py)
    ANY    /v1/workers/{id}/engine/{path}   a fronted worker's engine (whisper-server), on loopback behind it
    POST   /v1/hive/workers/{id}/stop   SaveAndStop -> Stopped: save these slots' KV caches (time-bounded), then stop
    POST   /v1/hive/workers/{id}/slots/{n}/restore   SlotRestore -> SlotRestored: a saved slot into an idle one
    GET    /v1/hive/slot-cache          SlotCacheList: the saved slots, per model and key (rbee/hive/slot_cache.py)

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
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.common import sse, supervise
from rbee.common.error_responses import error_response
from rbee.common.jobs import Emit, Job, JobFailed, JobRunner
from rbee.common.metrics import ColonyCollector, engine_metrics
from rbee.common.prom import CONTENT_TYPE, CollectorRegistry, generate_latest
from rbee.contracts.catalog import HivePull
from rbee.contracts.copies import HiveFetch, ShareOpen
from rbee.contracts.hives import HostedWorker, ResolvedModel, ResolveModel, SpawnWorker
from rbee.contracts.jobs import JobCreated, JobKind
from rbee.contracts.slots import MAX_SLOT, SaveAndStop, SlotRestore
from rbee.contracts.spread_plans import EchoOpen, LinkMeasure
from rbee.contracts.spreads import SPREAD_ID_PATTERN, ChannelOpen, RpcServerOpen
from rbee.hive import downloads, front, links, model_refs, shares
from rbee.hive.config import HiveConfig
from rbee.hive.model_store import ModelUnavailable
from rbee.hive.models_file import CHECK_INTERVAL_S
from rbee.hive.queen_link import QueenLink
from rbee.hive.rpc_channel import ChannelRefused
from rbee.hive.rpc_servers import RpcRefused
from rbee.hive.service import Hive
from rbee.hive.slot_cache import SlotRefused
from rbee.hive.worker import WorkerStartError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


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
        worker = await hive.spawn_worker(entry, asked.mode, memory=asked.memory, shape=asked, device=asked.device,
                                         spread=asked.spread)
    except ModelUnavailable as exc:
        raise _Refusal(404, str(exc), "model_not_found") from exc
    except (WorkerStartError, JobFailed) as exc:
        raise _Refusal(503, str(exc), "worker_start_failed") from exc
    hosted = HostedWorker(info=worker.info(), api_key=worker.api_key, entry=worker.spec.model)
    return JSONResponse(hosted.model_dump(mode="json"), status_code=201)


def _jobs(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs


async def start_pull(request: Request) -> Response:
    """Start downloading a model here; the hub settings (and the token) are the queen's, for this job only."""
    hive = _hive(request)
    asked = await _parse(request, HivePull)
    token = asked.hf_token.get_secret_value() if asked.hf_token is not None else None
    hub = downloads.Hub.for_job(asked.hf_endpoint, token)

    async def pull(emit: Emit) -> dict[str, object]:
        return (await hive.pull(asked.model, emit, hub)).model_dump(mode="json")

    job = _jobs(request).start(JobKind.MODEL_PULL, pull, subject=asked.model)
    log.info("pulling %s for the queen (%s)", asked.model, job.id)
    return JSONResponse(JobCreated(job_id=job.id).model_dump(), status_code=201)


async def open_share(request: Request) -> Response:
    """Serve one model's files to one peer hive for a while (the queen asks, for a copy onto that peer)."""
    hive = _hive(request)
    asked = await _parse(request, ShareOpen)
    try:
        await hive.resolve(asked.model)
    except ModelUnavailable as exc:
        raise _Refusal(404, str(exc), "model_not_found") from exc
    try:
        opened = await hive.open_share(asked)
    except JobFailed as exc:
        raise _Refusal(409, str(exc), "not_shared") from exc
    return JSONResponse(opened.model_dump(mode="json"), status_code=201)


async def share_file(request: Request) -> Response:
    return _hive(request).shares.serve(request)


async def start_fetch(request: Request) -> Response:
    """Copy a model from a peer hive's share into this hive, as a job the queen follows."""
    hive = _hive(request)
    asked = await _parse(request, HiveFetch)
    if asked.from_queen:  # the queen's own hive: read at the queen's address as this hive knows it
        asked = asked.model_copy(update={"source_url": request.app.state.queen_url})

    async def fetch(emit: Emit) -> dict[str, object]:
        return (await hive.copy_in(asked, emit)).model_dump(mode="json")

    job = _jobs(request).start(JobKind.MODEL_PULL, fetch, subject=asked.entry.name)
    log.info("copying %s from hive %s for the queen (%s)", asked.entry.name, asked.source, job.id)
    return JSONResponse(JobCreated(job_id=job.id).model_dump(), status_code=201)


async def open_echo(request: Request) -> Response:
    """Answer one peer hive's link measure for a while (the queen asks, before it asks that peer to measure)."""
    asked = await _parse(request, EchoOpen)
    try:
        opened = await request.app.state.echoes.open(asked)
    except links.LinkFailed as exc:
        raise _Refusal(409, str(exc), "too_many_echoes") from exc
    return JSONResponse(opened.model_dump(mode="json"), status_code=201)


async def measure_link(request: Request) -> Response:
    """Measure the link from here to a peer hive's echo (its URL and token from the queen)."""
    hive = _hive(request)
    asked = await _parse(request, LinkMeasure)
    try:
        measured = await links.measure(hive.alias, asked, hive.tls.client_context() if hive.tls else None)
    except links.LinkFailed as exc:
        raise _Refusal(502, str(exc), "link_failed") from exc
    return JSONResponse(measured.model_dump(mode="json"))


def _job(request: Request) -> Job:
    job = _jobs(request).get(request.path_params["job_id"])
    if job is None:
        raise _Refusal(404, f"There is no job '{request.path_params['job_id']}' on this hive.", "not_found")
    return job


async def job_events(request: Request) -> Response:
    return sse.job_events(_job(request), request)


async def cancel_job(request: Request) -> Response:
    job = _job(request)
    return JSONResponse({"job_id": job.id, "cancelled": _jobs(request).cancel(job.id)})


_COUNT = re.compile(r"^[1-9][0-9]{0,8}$")


def _count(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not _COUNT.fullmatch(value):
        raise _Refusal(400, f"'{name}' must be a positive integer", "invalid_value")
    return int(value)


async def model_detail(request: Request) -> Response:
    try:
        detail = await _hive(request).detail(request.path_params["name"], _count(request, "ctx"),
                                             _count(request, "slots"))
    except (ModelUnavailable, JobFailed) as exc:
        raise _Refusal(404, str(exc), "model_not_found") from exc
    return JSONResponse(detail.model_dump(mode="json"))


async def remove_model(request: Request) -> Response:
    try:
        entry = await _hive(request).remove(request.path_params["name"])
    except ModelUnavailable as exc:
        raise _Refusal(404, str(exc), "model_not_found") from exc
    return JSONResponse(entry.model_dump(mode="json"))


async def open_channel(request: Request) -> Response:
    """One end of a spread's channel (the queen opens the helper's listen end first, then the main's dial end)."""
    asked = await _parse(request, ChannelOpen)
    try:
        opened = await _hive(request).channels.open(asked, api_port=request.app.state.port)
    except ChannelRefused as exc:
        raise _Refusal(exc.status, str(exc), exc.code) from exc
    return JSONResponse(opened.model_dump(mode="json"), status_code=201)


async def close_channel(request: Request) -> Response:
    closed = await _hive(request).channels.close(request.path_params["channel_id"])
    if closed is None:
        raise _Refusal(404, f"There is no channel '{request.path_params['channel_id'][:80]}' on this hive.",
                       "not_found")
    return JSONResponse(closed.model_dump(mode="json"))


async def start_rpc_server(request: Request) -> Response:
    asked = await _parse(request, RpcServerOpen)
    try:
        started = await _hive(request).start_rpc_server(asked)
    except RpcRefused as exc:
        raise _Refusal(exc.status, str(exc), exc.code) from exc
    except JobFailed as exc:
        raise _Refusal(400, str(exc), "invalid_device") from exc
    return JSONResponse(started.model_dump(mode="json"), status_code=201)


async def stop_rpc_servers(request: Request) -> Response:
    spread = request.path_params["spread"]
    if not re.fullmatch(SPREAD_ID_PATTERN, spread):
        raise _Refusal(400, "A spread's id is letters, digits, '.', '_' and '-' (at most 64).", "invalid_spread")
    stopped = await _hive(request).rpc_servers.stop(spread)
    return JSONResponse([s.model_dump(mode="json") for s in stopped])


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this hive: its workers, its memory, and its workers' own."""
    hive = _hive(request)
    registry = CollectorRegistry()
    registry.register(ColonyCollector([hive]))
    engines = await engine_metrics(hive.supervisor.workers(), hive.tls.client_context() if hive.tls else None)
    return Response(generate_latest(registry) + engines.encode(), media_type=CONTENT_TYPE)


async def engine(request: Request) -> Response:
    engine_front: front.EngineFront = request.app.state.front
    return await engine_front.serve(request)


async def stop(request: Request) -> Response:
    worker = await _hive(request).supervisor.stop(request.path_params["worker_id"])
    if worker is None:
        raise _Refusal(404, f"There is no worker '{request.path_params['worker_id']}' on this hive.", "not_found")
    return JSONResponse(worker.info().model_dump(mode="json"))


async def save_and_stop(request: Request) -> Response:
    asked = await _parse(request, SaveAndStop)
    try:
        stopped = await _hive(request).save_and_stop(request.path_params["worker_id"], asked.save)
    except SlotRefused as exc:
        raise _Refusal(exc.status, str(exc), "not_found" if exc.status == 404 else "invalid_value") from exc
    return JSONResponse(stopped.model_dump(mode="json"))


_SLOT = re.compile(r"^(0|[1-9][0-9]{0,2})$")


async def restore_slot(request: Request) -> Response:
    raw = request.path_params["slot"]
    if not _SLOT.fullmatch(raw) or int(raw) > MAX_SLOT:
        raise _Refusal(400, f"'slot' must be a slot number from 0 to {MAX_SLOT}", "invalid_value")
    asked = await _parse(request, SlotRestore)
    try:
        restored = await _hive(request).restore_slot(request.path_params["worker_id"], int(raw), asked.key)
    except SlotRefused as exc:
        raise _Refusal(exc.status, str(exc), {404: "not_found", 409: "conflict"}.get(exc.status, "invalid_value")) \
            from exc
    return JSONResponse(restored.model_dump(mode="json"))


async def slot_cache(request: Request) -> Response:
    return JSONResponse((await _hive(request).slot_cache()).model_dump(mode="json"))


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
            Route("/v1/hive/resolve", resolve, methods=["POST"]),
            Route("/v1/hive/workers", spawn, methods=["POST"]),
            Route("/v1/hive/workers/{worker_id}", stop, methods=["DELETE"]),
            Route("/v1/hive/workers/{worker_id}/stop", save_and_stop, methods=["POST"]),
            Route("/v1/hive/workers/{worker_id}/slots/{slot}/restore", restore_slot, methods=["POST"]),
            Route("/v1/hive/slot-cache", slot_cache, methods=["GET"]),
            Route("/v1/hive/pulls", start_pull, methods=["POST"]),
            Route("/v1/hive/jobs/{job_id}/events", job_events, methods=["GET"]),
            Route("/v1/hive/jobs/{job_id}", cancel_job, methods=["DELETE"]),
            Route("/v1/hive/models/{name:path}", model_detail, methods=["GET"]),
            Route("/v1/hive/models/{name:path}", remove_model, methods=["DELETE"]),
            Route("/v1/hive/shares", open_share, methods=["POST"]),
            Route("/v1/hive/shares/{share_id}/files/{index:int}", share_file, methods=["GET", "HEAD"]),
            Route("/v1/hive/fetches", start_fetch, methods=["POST"]),
            Route("/v1/hive/links/echoes", open_echo, methods=["POST"]),
            Route("/v1/hive/links/measure", measure_link, methods=["POST"]),
            Route("/v1/hive/channels", open_channel, methods=["POST"]),
            Route("/v1/hive/channels/{channel_id}", close_channel, methods=["DELETE"]),
            Route("/v1/hive/rpc-servers", start_rpc_server, methods=["POST"]),
            Route("/v1/hive/rpc-servers/{spread}", stop_rpc_servers, methods=["DELETE"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/workers/{worker_id}/engine{path:path}", engine,
                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        ],
        exception_handlers={_Refusal: _refused},
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
