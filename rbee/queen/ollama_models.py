"""Ollama's model management on the queen, as rbee's own: `/api/pull` is the `model.pull` job that `rbee model
pull` and `POST /v1/jobs` start (the queen chooses the hive; a peer hive's copy before the hub), and
`/api/delete` is the catalog removal of `rbee model rm`. Both manage the queen: the admin's, as those are.

    /api/pull     the job's events as Ollama's NDJSON progress: {"status": "pulling manifest"} when it starts,
                  {"status": "pulling FILE", "digest": FILE, "total", "completed"} (bytes, over all its files)
                  while it downloads, its other messages as {"status": ...}, then {"status": "success"}; a
                  failure after the 200 is one {"error": ...} line. `"stream": false`: one {"status": "success"}
                  once done, or the job's error (500, as Ollama answers a failed pull). Either way, a client
                  that leaves before the end cancels the pull, as with Ollama
    /api/delete   the model, from the hive whose catalog has it (its files too, when rbee downloaded them)

Names are rbee's (`org/repo:QUANT`, an alias, a catalog name) or Ollama's `hf.co/org/repo:QUANT`
(contracts/ollama.rbee_name); one that can be neither is a 400, and a plain name no hive holds (Ollama's library,
`llama3.2`) a 404, before anything starts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee.common.jobs import Job, JobRunner
from rbee.contracts.jobs import JobCreate, JobEvent, JobEventType, JobKind
from rbee.contracts.ollama import OllamaDeleteRequest, OllamaPullRequest
from rbee.hive import model_refs
from rbee.queen.admin_routes import start_job
from rbee.queen.catalog_routes import remove_from_catalog
from rbee.queen.error_styles import OLLAMA
from rbee.queen.errors import InvalidRequest, ModelNotFound, QueenError
from rbee.queen.inference import client_gone
from rbee.queen.ollama_routes import entries
from rbee.queen.ollama_translate import NDJSON
from rbee.queen.requests import read_json
from rbee.queen.state import queen_state

PULL_FAILED = 500  # Ollama's status for a pull that failed, when it does not stream

Handler = Callable[[Request], Awaitable[Response]]


def _in_ollamas_shape(handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except QueenError as exc:
            return OLLAMA.response(exc.status, exc.message, headers=exc.headers)
    handle.__doc__, handle.__name__ = handler.__doc__, handler.__name__
    return handle


async def _pullable(request: Request, asked: str) -> str:
    """rbee's name for `asked`, once it is known to be something a pull can find."""
    name = asked
    try:
        ref = model_refs.parse(name)
    except model_refs.BadModelRef as exc:
        raise InvalidRequest(f"{exc}; Ollama's form hf.co/org/repo:QUANT works too", param="model") from None
    if ref.catalog_name is not None and ref.catalog_name not in await entries(request):
        raise ModelNotFound(f"model '{asked}' not found: rbee pulls GGUF models from Hugging Face; name one as "
                            "hf.co/org/repo:QUANT (or org/repo:QUANT), or an alias (`rbee model pull --help`)",
                            param="model")
    return name


def progress_line(event: JobEvent) -> dict[str, Any] | None:
    """One event of a pull job as Ollama's progress line (None: nothing to say)."""
    if event.type is JobEventType.STARTED:
        return {"status": "pulling manifest"}
    if event.type is JobEventType.DONE:
        return {"status": "success"}
    if event.type is JobEventType.CANCELLED:
        return {"error": "the pull was cancelled"}
    if event.type is JobEventType.ERROR:
        return {"error": event.message}
    if event.type is JobEventType.LOG or not event.message:
        return None
    if event.unit == "bytes" and event.total:
        return {"status": f"pulling {event.message}", "digest": event.message, "total": int(event.total),
                "completed": int(event.current or 0)}
    return {"status": event.message}


async def _lines(job: Job, jobs: JobRunner) -> AsyncIterator[bytes]:
    try:
        async for event in job.follow():
            line = progress_line(event)
            if line is not None:
                yield json.dumps(line).encode() + b"\n"
    finally:
        if not job.finished:  # the client left: its pull stops, as Ollama's does
            jobs.cancel(job.id)


async def _outcome(request: Request, job: Job) -> JobEvent:
    """The job's last event; if the client leaves first, the job is cancelled (and that is its last)."""
    done, gone = asyncio.ensure_future(job.wait()), asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not done.done():
            queen_state(request).jobs.cancel(job.id)
    return await done


@_in_ollamas_shape
async def pull(request: Request) -> Response:
    """Pull a model (rbee's `model.pull` job), with Ollama's NDJSON progress."""
    _, asked = await read_json(request, OllamaPullRequest)
    name = await _pullable(request, asked.model)
    job = await start_job(request, JobCreate(kind=JobKind.MODEL_PULL, model=name))
    if asked.stream:
        return StreamingResponse(_lines(job, queen_state(request).jobs), media_type=NDJSON)
    line = progress_line(await _outcome(request, job)) or {}
    if "error" in line:
        return OLLAMA.response(PULL_FAILED, line["error"])
    return JSONResponse(line)


@_in_ollamas_shape
async def delete(request: Request) -> Response:
    """Remove a model from the hive that holds it (as `rbee model rm`)."""
    _, asked = await read_json(request, OllamaDeleteRequest)
    await remove_from_catalog(request, asked.model,
                              not_found=f"model '{asked.model}' not found")
    return Response(status_code=200)


routes = [
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
]
