"""rbee's own API: health, colony status, workers, jobs, shutdown."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.common import sse
from rbee.common.jobs import Emit, Job, JobBody, JobFailed
from rbee.common.metrics import engine_metrics
from rbee.common.prom import CONTENT_TYPE
from rbee.contracts.jobs import JobCreate, JobCreated, JobKind
from rbee.contracts.spread_plans import BadSpread, SpreadAsk, is_spread, parse_spread
from rbee.contracts.status import StatusReport
from rbee.contracts.workers import WorkerMode
from rbee.hive.service import Hive
from rbee.queen import pull_targets
from rbee.queen.errors import InvalidRequest, NotFound, QueenError
from rbee.queen.guard import principal_of
from rbee.queen.requests import read_json
from rbee.queen.spread_routes import plan_for, start_planned
from rbee.queen.spread_run import describe
from rbee.queen.state import QueenState, queen_state


async def health(request: Request) -> Response:
    """Whether this is a running queen, and its version."""
    return JSONResponse(queen_state(request).health().model_dump())


async def metrics(request: Request) -> Response:
    """Prometheus metrics: the queen's counters, its hives and workers, and every ready worker's own."""
    state = queen_state(request)
    workers = [w for hive in list(state.hives.values()) for w in hive.supervisor.workers()]
    engines = await engine_metrics(workers, state.hive_tls)
    return Response(state.metrics.exposition() + engines.encode(), media_type=CONTENT_TYPE)


async def status(request: Request) -> Response:
    state = queen_state(request)
    report = StatusReport(
        queen=state.health(),
        hives=[await hive.info() for hive in list(state.hives.values())],
        workers=[state.spreads.shown(state.scheduler.loads.shown(w)) for hive in list(state.hives.values())
                 for w in hive.supervisor.workers()],
        models=[m for hive in list(state.hives.values()) for m in await hive.catalog.entries()],
        traffic=state.metrics.traffic.model_copy(update={"waiting": state.scheduler.waiting()}),
        policy=state.scheduler.policy.status(),
        background=state.loop_health,
    )
    return JSONResponse(report.model_dump(mode="json"))


async def list_workers(request: Request) -> Response:
    state = queen_state(request)
    workers = [state.spreads.shown(state.scheduler.loads.shown(w)).model_dump(mode="json")
               for h in state.hives.values() for w in h.supervisor.workers()]
    return JSONResponse(workers)


async def stop_worker(request: Request) -> Response:
    worker_id = request.path_params["worker_id"]
    for hive in queen_state(request).hives.values():
        worker = await hive.supervisor.stop(worker_id)
        if worker is not None:
            queen_state(request).scheduler.notify()  # its memory is free: waiters may load there now
            await queen_state(request).audit(principal_of(request.scope), request, "worker.stop", worker_id,
                                             f"{worker.spec.model.name} on {hive.alias}")
            return JSONResponse(queen_state(request).scheduler.loads.shown(worker).model_dump(mode="json"))
    raise NotFound(f"There is no worker '{worker_id}'; `rbee worker list` shows the running ones.")


def _job_body(state: QueenState, spec: JobCreate) -> JobBody:
    if is_spread(spec.device):
        if spec.kind is not JobKind.WORKER_SPAWN or not spec.model:
            raise InvalidRequest("HIVE:DEV+HIVE:DEV starts a worker spread across hives; a pull goes to one hive.",
                                 param="device")
        try:
            named = "+".join(map(str, parse_spread(spec.device or "")))
        except BadSpread as exc:
            raise InvalidRequest(str(exc), param="device") from exc
        return spread_job(state, SpreadAsk(model=spec.model, spread=named))
    hives = state.scheduler.hives_for(spec.hive)
    if not hives:
        raise NotFound("No hive is ready to run this job; `rbee hive list` shows them.")
    hive = hives[0]
    if spec.kind is JobKind.ENGINE_INSTALL:
        if not isinstance(hive, Hive):  # the kind matters: the queen builds only its own machine's engine
            raise InvalidRequest(f"The engine of remote hive '{hive.alias}' is installed on its machine, by "
                                 f"`rbee hive install {hive.alias}`.", param="hive")
        local = hive
        return lambda emit: local.install_engine(emit, force=spec.force, backend=spec.backend, engine_name=spec.engine)
    if not spec.model:
        raise InvalidRequest(f"A {spec.kind} job needs a 'model'.", param="model")
    model = spec.model

    async def pull(emit: Emit) -> dict[str, object]:
        target, placement = hive, {}
        if spec.hive is None:  # the queen chooses (rbee/queen/pull_targets.py)
            chosen = await pull_targets.place_pull(state.hives, model, emit)
            if chosen is not None:
                target, placement = chosen[0], {"placement": chosen[1].explain()}
        placed = await state.copies.ensure_on(target, model, emit, allow_hub=True)  # a peer first, else the hub
        return {"hive": target.alias, **placement, "origin": placed.origin, **placed.entry.model_dump(mode="json")}

    async def spawn(emit: Emit) -> dict[str, object]:
        emit(message=f"starting a worker for {model} on {hive.alias}")
        try:
            worker = await state.scheduler.spawn(model, WorkerMode.GENERATE, hive.alias, spec.device)
        except QueenError as exc:
            raise JobFailed(exc.message) from exc
        return state.scheduler.loads.shown(worker).model_dump(mode="json")

    return pull if spec.kind is JobKind.MODEL_PULL else spawn


def spread_job(state: QueenState, asked: SpreadAsk) -> JobBody:
    """A `worker.spawn` job for a spread across hives: planned (rbee/queen/spread_routes.py), then carried out."""
    async def spawn(emit: Emit) -> dict[str, object]:
        try:
            plan = await plan_for(state, asked)
        except QueenError as exc:
            raise JobFailed(exc.message) from exc
        if not plan.spread:
            raise JobFailed(plan.reason)
        emit(message=f"starting {asked.model} spread over {describe(plan)}")
        worker = await start_planned(state, plan, emit)
        state.scheduler.loads.of(worker).expires_at = None  # never unloaded for idleness before its first request
        state.scheduler.notify()
        return state.scheduler.loads.shown(worker).model_dump(mode="json")
    return spawn


async def start_job(request: Request, spec: JobCreate) -> Job:
    """Start the job `spec` asks for, audited as the caller's (`POST /v1/jobs`, and Ollama's `/api/pull`)."""
    state = queen_state(request)
    job = state.jobs.start(spec.kind, _job_body(state, spec), subject=spec.model or spec.hive)
    await state.audit(principal_of(request.scope), request, str(spec.kind), job.subject or "-", f"job {job.id}")
    return job


async def create_job(request: Request) -> Response:
    _, spec = await read_json(request, JobCreate)
    job = await start_job(request, spec)
    return JSONResponse(JobCreated(job_id=job.id).model_dump(), status_code=201)


def _job(request: Request) -> Job:
    job = queen_state(request).jobs.get(request.path_params["job_id"])
    if job is None:
        raise NotFound(f"There is no job '{request.path_params['job_id']}'.")
    return job


async def list_jobs(request: Request) -> Response:
    return JSONResponse([job.info().model_dump(mode="json") for job in queen_state(request).jobs.all()])


async def get_job(request: Request) -> Response:
    return JSONResponse(_job(request).info().model_dump(mode="json"))


async def job_events(request: Request) -> Response:
    return sse.job_events(_job(request), request)


async def cancel_job(request: Request) -> Response:
    job = _job(request)
    cancelled = queen_state(request).jobs.cancel(job.id)
    return JSONResponse({"job_id": job.id, "cancelled": cancelled})


async def shutdown(request: Request) -> Response:
    server = getattr(request.app.state, "server", None)
    if server is None:
        raise NotFound("This queen is not running under rbee's server and cannot stop itself.")
    await queen_state(request).audit(principal_of(request.scope), request, "queen.shutdown", "queen")
    asyncio.get_running_loop().call_later(0.05, setattr, server, "should_exit", True)
    return JSONResponse({"stopping": True}, status_code=202)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/status", status, methods=["GET"]),
    Route("/v1/workers", list_workers, methods=["GET"]),
    Route("/v1/workers/{worker_id}", stop_worker, methods=["DELETE"]),
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs", list_jobs, methods=["GET"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}", cancel_job, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/v1/admin/shutdown", shutdown, methods=["POST"]),
]
