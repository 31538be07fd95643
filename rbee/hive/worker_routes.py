"""The hive API's worker routes (rbee/hive/app.py lists the groups): start and stop workers, save and restore
their slots' KV caches, and the front to a fronted worker's engine.

    POST   /v1/hive/workers             SpawnWorker -> HostedWorker: start a worker (201)
    DELETE /v1/hive/workers/{id}        stop it
    POST   /v1/hive/workers/{id}/stop   SaveAndStop -> Stopped: save these slots' KV caches (time-bounded), then stop
    POST   /v1/hive/workers/{id}/slots/{n}/restore   SlotRestore -> SlotRestored: a saved slot into an idle one
    GET    /v1/hive/slot-cache          SlotCacheList: the saved slots, per model and key (rbee/hive/slot_cache.py)
    ANY    /v1/workers/{id}/engine/{path}   a fronted worker's engine (whisper-server), on loopback behind it
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.common.jobs import JobFailed
from rbee.contracts.hives import HostedWorker, SpawnWorker
from rbee.contracts.slots import MAX_SLOT, SaveAndStop, SlotRestore
from rbee.hive import front
from rbee.hive.api_util import Refusal, hive_of, parse
from rbee.hive.model_store import ModelUnavailable
from rbee.hive.slot_cache import SlotRefused
from rbee.hive.worker import WorkerStartError


async def spawn(request: Request) -> Response:
    hive = hive_of(request)
    asked = await parse(request, SpawnWorker)
    try:
        entry = await hive.resolve(asked.model)
        worker = await hive.spawn_worker(entry, asked.mode, memory=asked.memory, shape=asked, device=asked.device,
                                         spread=asked.spread)
    except ModelUnavailable as exc:
        raise Refusal(404, str(exc), "model_not_found") from exc
    except (WorkerStartError, JobFailed) as exc:
        raise Refusal(503, str(exc), "worker_start_failed") from exc
    hosted = HostedWorker(info=worker.info(), api_key=worker.api_key, entry=worker.spec.model)
    return JSONResponse(hosted.model_dump(mode="json"), status_code=201)


async def engine(request: Request) -> Response:
    engine_front: front.EngineFront = request.app.state.front
    return await engine_front.serve(request)


async def stop(request: Request) -> Response:
    worker = await hive_of(request).supervisor.stop(request.path_params["worker_id"])
    if worker is None:
        raise Refusal(404, f"There is no worker '{request.path_params['worker_id']}' on this hive.", "not_found")
    return JSONResponse(worker.info().model_dump(mode="json"))


async def save_and_stop(request: Request) -> Response:
    asked = await parse(request, SaveAndStop)
    try:
        stopped = await hive_of(request).save_and_stop(request.path_params["worker_id"], asked.save)
    except SlotRefused as exc:
        raise Refusal(exc.status, str(exc), "not_found" if exc.status == 404 else "invalid_value") from exc
    return JSONResponse(stopped.model_dump(mode="json"))


_SLOT = re.compile(r"^(0|[1-9][0-9]{0,2})$")


async def restore_slot(request: Request) -> Response:
    raw = request.path_params["slot"]
    if not _SLOT.fullmatch(raw) or int(raw) > MAX_SLOT:
        raise Refusal(400, f"'slot' must be a slot number from 0 to {MAX_SLOT}", "invalid_value")
    asked = await parse(request, SlotRestore)
    try:
        restored = await hive_of(request).restore_slot(request.path_params["worker_id"], int(raw), asked.key)
    except SlotRefused as exc:
        raise Refusal(exc.status, str(exc), {404: "not_found", 409: "conflict"}.get(exc.status, "invalid_value")) \
            from exc
    return JSONResponse(restored.model_dump(mode="json"))


async def slot_cache(request: Request) -> Response:
    return JSONResponse((await hive_of(request).slot_cache()).model_dump(mode="json"))


routes = [
    Route("/v1/hive/workers", spawn, methods=["POST"]),
    Route("/v1/hive/workers/{worker_id}", stop, methods=["DELETE"]),
    Route("/v1/hive/workers/{worker_id}/stop", save_and_stop, methods=["POST"]),
    Route("/v1/hive/workers/{worker_id}/slots/{slot}/restore", restore_slot, methods=["POST"]),
    Route("/v1/hive/slot-cache", slot_cache, methods=["GET"]),
    Route("/v1/workers/{worker_id}/engine{path:path}", engine,
          methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
]
