"""The OpenAI-compatible API: where inference requests enter the queen."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.contracts.models import ModelList, ModelObject
from rbee.contracts.openai import (
    HIVE_HEADER,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelRequest,
)
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.queen.errors import ClientGone, ModelNotFound, WorkerUnavailable
from rbee.queen.requests import read_json
from rbee.queen.scheduler import Lease
from rbee.queen.state import QueenState, queen_state

log = logging.getLogger(__name__)


async def _models(state: QueenState) -> list[ModelObject]:
    found: dict[str, ModelObject] = {}
    for hive in list(state.hives.values()):
        loaded = {w.spec.model.name for w in hive.supervisor.workers() if w.state is WorkerState.READY}
        for entry in await hive.catalog.list():
            if entry.missing:
                continue
            obj = found.setdefault(entry.name, ModelObject(id=entry.name, created=int(entry.added_at)))
            obj.hives.append(hive.alias)
            obj.loaded = obj.loaded or entry.name in loaded
    return sorted(found.values(), key=lambda m: m.id)


async def list_models(request: Request) -> Response:
    return JSONResponse(ModelList(data=await _models(queen_state(request))).model_dump())


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model"]
    for obj in await _models(queen_state(request)):
        if obj.id == model_id:
            return JSONResponse(obj.model_dump())
    raise ModelNotFound(f"The model '{model_id}' does not exist. `GET /v1/models` lists the models rbee knows.",
                        param="model")


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _acquire(request: Request, parsed: ModelRequest, mode: WorkerMode, exclude: frozenset[str]) -> Lease:
    """Wait for a worker, but stop waiting (and leave the queue) when the client goes away."""
    state = queen_state(request)
    acquiring = asyncio.ensure_future(state.scheduler.acquire(
        parsed.model, mode, request.headers.get(HIVE_HEADER), parsed.keep_alive, exclude))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({acquiring, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not acquiring.done():
        acquiring.cancel()
        with contextlib.suppress(BaseException):
            (await acquiring).release()
        raise ClientGone("The client left while its request was queued.")
    return acquiring.result()


async def _infer(request: Request, contract: type[ModelRequest], path: str, mode: WorkerMode) -> Response:
    state = queen_state(request)
    body, parsed = await read_json(request, contract)
    stream = bool(getattr(parsed, "stream", False))
    lease = state.scheduler.try_acquire(parsed.model, mode, request.headers.get(HIVE_HEADER), parsed.keep_alive)
    if lease is None:
        lease = await _acquire(request, parsed, mode, frozenset())
    try:
        return await state.forwarder.forward(lease, path, body, stream=stream)
    except WorkerUnavailable:
        # The worker failed before sending a byte: one more try on another (or a fresh) worker.
        log.warning("worker %s failed before answering; retrying once elsewhere", lease.worker.id)
        retry = await _acquire(request, parsed, mode, frozenset({lease.worker.id}))
        return await state.forwarder.forward(retry, path, body, stream=stream)


async def chat_completions(request: Request) -> Response:
    return await _infer(request, ChatCompletionRequest, "/v1/chat/completions", WorkerMode.GENERATE)


async def completions(request: Request) -> Response:
    return await _infer(request, CompletionRequest, "/v1/completions", WorkerMode.GENERATE)


async def embeddings(request: Request) -> Response:
    return await _infer(request, EmbeddingRequest, "/v1/embeddings", WorkerMode.EMBED)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
