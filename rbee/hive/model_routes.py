"""The hive API's model routes (rbee/hive/app.py lists them all): resolve a name, pull from the hub and follow
or cancel the job, a model's detail and removal, shares to a peer hive, and copies from one.

    POST   /v1/hive/resolve             ResolveModel -> ResolvedModel: the catalog entry and its memory need
    POST   /v1/hive/pulls               HivePull -> JobCreated: a download, as a job of this hive's
    GET    /v1/hive/jobs/{id}/events    the job's events as SSE (Last-Event-ID resumes), until a terminal one
    DELETE /v1/hive/jobs/{id}           cancel it (a cancelled pull leaves no files behind)
    GET    /v1/hive/models/{name}       ModelDetail (?ctx=&slots=), read here
    DELETE /v1/hive/models/{name}       forget a model, deleting what rbee downloaded or copied
    POST   /v1/hive/shares              ShareOpen -> ShareOpened: serve one model's files to one peer hive
    GET    /v1/hive/shares/{id}/files/{index}   a shared file (Range); the share's token, not the join token
    POST   /v1/hive/fetches             HiveFetch -> JobCreated: copy a model from a peer's share, as a job
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.common import sse
from rbee.common.jobs import Emit, Job, JobFailed
from rbee.contracts.catalog import HivePull
from rbee.contracts.copies import HiveFetch, ShareOpen
from rbee.contracts.hives import ResolvedModel, ResolveModel
from rbee.contracts.jobs import JobCreated, JobKind
from rbee.hive import downloads
from rbee.hive.api_util import Refusal, hive_of, jobs_of, parse
from rbee.hive.model_store import ModelUnavailable

log = logging.getLogger(__name__)


async def resolve(request: Request) -> Response:
    hive = hive_of(request)
    asked = await parse(request, ResolveModel)
    try:
        entry = await hive.resolve(asked.model)
        need = await hive.need(entry, asked)
    except (ModelUnavailable, JobFailed) as exc:
        raise Refusal(404, str(exc), "model_not_found") from exc
    return JSONResponse(ResolvedModel(entry=entry, need=need).model_dump(mode="json"))


async def start_pull(request: Request) -> Response:
    """Start downloading a model here; the hub settings (and the token) are the queen's, for this job only."""
    hive = hive_of(request)
    asked = await parse(request, HivePull)
    token = asked.hf_token.get_secret_value() if asked.hf_token is not None else None
    hub = downloads.Hub.for_job(asked.hf_endpoint, token)

    async def pull(emit: Emit) -> dict[str, object]:
        return (await hive.pull(asked.model, emit, hub)).model_dump(mode="json")

    job = jobs_of(request).start(JobKind.MODEL_PULL, pull, subject=asked.model)
    log.info("pulling %s for the queen (%s)", asked.model, job.id)
    return JSONResponse(JobCreated(job_id=job.id).model_dump(), status_code=201)


async def open_share(request: Request) -> Response:
    """Serve one model's files to one peer hive for a while (the queen asks, for a copy onto that peer)."""
    hive = hive_of(request)
    asked = await parse(request, ShareOpen)
    try:
        await hive.resolve(asked.model)
    except ModelUnavailable as exc:
        raise Refusal(404, str(exc), "model_not_found") from exc
    try:
        opened = await hive.open_share(asked)
    except JobFailed as exc:
        raise Refusal(409, str(exc), "not_shared") from exc
    return JSONResponse(opened.model_dump(mode="json"), status_code=201)


async def share_file(request: Request) -> Response:
    return hive_of(request).shares.serve(request)


async def start_fetch(request: Request) -> Response:
    """Copy a model from a peer hive's share into this hive, as a job the queen follows."""
    hive = hive_of(request)
    asked = await parse(request, HiveFetch)
    if asked.from_queen:  # the queen's own hive: read at the queen's address as this hive knows it
        asked = asked.model_copy(update={"source_url": request.app.state.queen_url})

    async def fetch(emit: Emit) -> dict[str, object]:
        return (await hive.copy_in(asked, emit)).model_dump(mode="json")

    job = jobs_of(request).start(JobKind.MODEL_PULL, fetch, subject=asked.entry.name)
    log.info("copying %s from hive %s for the queen (%s)", asked.entry.name, asked.source, job.id)
    return JSONResponse(JobCreated(job_id=job.id).model_dump(), status_code=201)


def _job(request: Request) -> Job:
    job = jobs_of(request).get(request.path_params["job_id"])
    if job is None:
        raise Refusal(404, f"There is no job '{request.path_params['job_id']}' on this hive.", "not_found")
    return job


async def job_events(request: Request) -> Response:
    return sse.job_events(_job(request), request)


async def cancel_job(request: Request) -> Response:
    job = _job(request)
    return JSONResponse({"job_id": job.id, "cancelled": jobs_of(request).cancel(job.id)})


_COUNT = re.compile(r"^[1-9][0-9]{0,8}$")


def _count(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not _COUNT.fullmatch(value):
        raise Refusal(400, f"'{name}' must be a positive integer", "invalid_value")
    return int(value)


async def model_detail(request: Request) -> Response:
    try:
        detail = await hive_of(request).detail(request.path_params["name"], _count(request, "ctx"),
                                             _count(request, "slots"))
    except (ModelUnavailable, JobFailed) as exc:
        raise Refusal(404, str(exc), "model_not_found") from exc
    return JSONResponse(detail.model_dump(mode="json"))


async def remove_model(request: Request) -> Response:
    try:
        entry = await hive_of(request).remove(request.path_params["name"])
    except ModelUnavailable as exc:
        raise Refusal(404, str(exc), "model_not_found") from exc
    return JSONResponse(entry.model_dump(mode="json"))


routes = [
    Route("/v1/hive/resolve", resolve, methods=["POST"]),
    Route("/v1/hive/pulls", start_pull, methods=["POST"]),
    Route("/v1/hive/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/v1/hive/jobs/{job_id}", cancel_job, methods=["DELETE"]),
    Route("/v1/hive/models/{name:path}", model_detail, methods=["GET"]),
    Route("/v1/hive/models/{name:path}", remove_model, methods=["DELETE"]),
    Route("/v1/hive/shares", open_share, methods=["POST"]),
    Route("/v1/hive/shares/{share_id}/files/{index:int}", share_file, methods=["GET", "HEAD"]),
    Route("/v1/hive/fetches", start_fetch, methods=["POST"]),
]
