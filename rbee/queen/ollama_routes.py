"""The Ollama API (`/api/*`, for Open WebUI, n8n, LangChain and the `ollama` clients), fleet-wide on the
queen's port: translated in the queen to the OpenAI routes workers speak, streamed line by line.

    /api/version, /api/tags, /api/ps, /api/show     answered from the queen's registry and catalogs
    /api/chat, /api/generate                        -> the worker's /v1/chat/completions (NDJSON back)
    /api/generate with `suffix`                     -> the worker's /infill (fill-in-the-middle, infill_routes)
    /api/embed, /api/embeddings                     -> the worker's /v1/embeddings

Routing, auth, limits, usage, queueing and deadlines are the chat path's (inference.infer); errors are
Ollama's `{"error": "..."}` (error_styles.OLLAMA). Pulling and deleting models: rbee/queen/ollama_models.py.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.contracts.models import ModelEntry
from rbee.contracts.ollama import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
)
from rbee.contracts.openai import ModelRequest
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.queen.error_styles import OLLAMA
from rbee.queen.errors import InvalidRequest, ModelNotFound, QueenError
from rbee.queen.guard import principal_of
from rbee.queen.inference import infer
from rbee.queen.infill_routes import fill_in_middle
from rbee.queen.ollama_translate import Chained, OllamaAnswer, OllamaEmbeddings, chat_body, generate_body, sampling
from rbee.queen.proxy import Translation
from rbee.queen.requests import read_json
from rbee.queen.state import queen_state


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _details(entry: ModelEntry) -> dict[str, Any]:
    count = entry.parameter_count
    return {"format": "gguf", "family": entry.architecture or "", "families": [entry.architecture or ""],
            "parameter_size": f"{count / 1e9:.1f}B" if count else "", "quantization_level": entry.quantization or ""}


def _capabilities(entry: ModelEntry) -> list[str]:
    pooling = entry.pooling or entry.header.get("pooling")
    return ["reranking"] if pooling == "rank" else ["completion", "embedding"]


async def entries(request: Request) -> dict[str, ModelEntry]:
    """Every model some hive holds (that the caller's key may use), by name."""
    who = principal_of(request.scope)
    allowed = who.key.models if who.key else None
    found: dict[str, ModelEntry] = {}
    for hive in list(queen_state(request).hives.values()):
        for entry in await hive.catalog.entries():
            if not entry.missing and (allowed is None or entry.name in allowed):
                found.setdefault(entry.name, entry)
    return found


def _tag(entry: ModelEntry) -> dict[str, Any]:
    return {"name": entry.name, "model": entry.name, "modified_at": _stamp(entry.added_at),
            "size": entry.size_bytes, "digest": next(iter(entry.sha256.values()), ""), "details": _details(entry)}


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


async def tags(request: Request) -> Response:
    return JSONResponse({"models": [_tag(e) for e in sorted((await entries(request)).values(),
                                                            key=lambda e: e.name)]})


async def ps(request: Request) -> Response:
    """Every loaded worker on every hive, with its size and where it runs."""
    held = await entries(request)
    loaded = []
    for hive in list(queen_state(request).hives.values()):
        for worker in hive.supervisor.workers():
            info = queen_state(request).scheduler.loads.shown(worker)
            if info.state is not WorkerState.READY or info.model not in held:
                continue
            expires = None if info.idle_unload_in_s is None else _stamp(time.time() + info.idle_unload_in_s)
            loaded.append({**_tag(held[info.model]), "size": info.memory_bytes,
                           "size_vram": 0 if info.device == "cpu" else info.memory_bytes,
                           "expires_at": expires or "9999-12-31T23:59:59Z", "context_length": info.context_size,
                           "hive": info.hive, "device": info.device, "worker": info.id})
    return JSONResponse({"models": loaded})


async def show(request: Request) -> Response:
    try:
        _, asked = await read_json(request, OllamaShowRequest)
        entry = (await entries(request)).get(asked.model)
        if entry is None:
            raise ModelNotFound(f"model '{asked.model}' not found", param="model")
    except QueenError as exc:
        return OLLAMA.response(exc.status, exc.message)
    arch = entry.architecture or "unknown"
    info = {"general.architecture": arch, "general.parameter_count": entry.parameter_count or 0,
            f"{arch}.context_length": entry.context_length or 0}
    return JSONResponse({"modelfile": "", "parameters": "", "template": "", "details": _details(entry),
                         "model_info": info, "capabilities": _capabilities(entry),
                         "modified_at": _stamp(entry.added_at)})


def _refuse_images(parsed: ModelRequest) -> None:
    images = getattr(parsed, "images", None) or any(getattr(m, "images", None) for m in getattr(parsed, "messages", []))
    if images:
        raise InvalidRequest(f"'{parsed.model}' cannot take images here: rbee's workers serve text models.",
                             param="images")


def _translated(make: Any, generate: bool) -> Any:
    def translator(body: bytes, parsed: ModelRequest) -> tuple[str, bytes, Translation]:
        _refuse_images(parsed)
        data = make(parsed)
        if getattr(parsed, "stream", False):
            data.update(stream=True, stream_options={"include_usage": True})
        return "/v1/chat/completions", json.dumps(data).encode(), OllamaAnswer(parsed.model, generate)
    return translator


def _fill_in(parsed: OllamaGenerateRequest) -> tuple[str, bytes, Translation]:
    """`/api/generate` with `suffix`: as `suffix` on `/v1/completions` is (the worker's `/infill`, infill_routes),
    its answer then as Ollama's; `num_predict` bounds it, else the model stops by itself, as with Ollama."""
    _refuse_images(parsed)
    completion: dict[str, Any] = {"model": parsed.model, "prompt": parsed.prompt, "suffix": parsed.suffix,
                                  **sampling(parsed.options)}
    if parsed.stream:
        completion.update(stream=True, stream_options={"include_usage": True})
    path, infill_body, answer = fill_in_middle(json.dumps(completion).encode(), parsed, None)
    return path, infill_body, Chained(answer, OllamaAnswer(parsed.model, True))


def _generate(body: bytes, parsed: ModelRequest) -> tuple[str, bytes, Translation]:
    if isinstance(parsed, OllamaGenerateRequest) and parsed.suffix is not None:
        return _fill_in(parsed)
    return _translated(generate_body, True)(body, parsed)


def _embed(body: bytes, parsed: ModelRequest) -> tuple[str, bytes, Translation]:
    legacy = isinstance(parsed, OllamaEmbeddingsRequest)
    data = {"model": parsed.model, "input": getattr(parsed, "prompt" if legacy else "input")}
    return "/v1/embeddings", json.dumps(data).encode(), OllamaEmbeddings(parsed.model, legacy)


async def _ollama(request: Request, contract: type[ModelRequest], mode: WorkerMode, translator: Any) -> Response:
    try:
        return await infer(request, contract, request.url.path, mode, errors=OLLAMA, translator=translator)
    except QueenError as exc:
        return OLLAMA.response(exc.status, exc.message, headers=exc.headers)


async def chat(request: Request) -> Response:
    return await _ollama(request, OllamaChatRequest, WorkerMode.GENERATE, _translated(chat_body, False))


async def generate(request: Request) -> Response:
    return await _ollama(request, OllamaGenerateRequest, WorkerMode.GENERATE, _generate)


async def embed(request: Request) -> Response:
    return await _ollama(request, OllamaEmbedRequest, WorkerMode.EMBED, _embed)


async def embeddings(request: Request) -> Response:
    return await _ollama(request, OllamaEmbeddingsRequest, WorkerMode.EMBED, _embed)


routes = [
    Route("/api/version", version, methods=["GET"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
