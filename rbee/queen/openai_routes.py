"""The OpenAI-compatible API: where inference requests enter the queen."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.contracts.models import ModelList, ModelObject
from rbee.contracts.openai import ChatCompletionRequest, EmbeddingRequest
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.queen import infill_routes
from rbee.queen.auth import Principal
from rbee.queen.errors import ModelNotFound
from rbee.queen.guard import principal_of
from rbee.queen.inference import infer
from rbee.queen.state import QueenState, queen_state


async def _models(state: QueenState, who: Principal) -> list[ModelObject]:
    allowed = who.key.models if who.key else None
    found: dict[str, ModelObject] = {}
    for hive in list(state.hives.values()):
        loaded = {w.spec.model.name for w in hive.supervisor.workers() if w.state is WorkerState.READY}
        for entry in await hive.catalog.entries():
            if entry.missing or (allowed is not None and entry.name not in allowed):
                continue
            obj = found.setdefault(entry.name, ModelObject(id=entry.name, created=int(entry.added_at),
                                                           kind=entry.kind))
            obj.hives.append(hive.alias)
            obj.loaded = obj.loaded or entry.name in loaded
    return sorted(found.values(), key=lambda m: m.id)


async def list_models(request: Request) -> Response:
    return JSONResponse(ModelList(data=await _models(queen_state(request), principal_of(request.scope))).model_dump())


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model"]
    for obj in await _models(queen_state(request), principal_of(request.scope)):
        if obj.id == model_id:
            return JSONResponse(obj.model_dump())
    raise ModelNotFound(f"The model '{model_id}' does not exist. `GET /v1/models` lists the models rbee knows.",
                        param="model")


async def chat_completions(request: Request) -> Response:
    return await infer(request, ChatCompletionRequest, "/v1/chat/completions", WorkerMode.GENERATE)


async def completions(request: Request) -> Response:
    return await infill_routes.completions(request)  # with `suffix`, fill-in-the-middle


async def embeddings(request: Request) -> Response:
    return await infer(request, EmbeddingRequest, "/v1/embeddings", WorkerMode.EMBED)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
