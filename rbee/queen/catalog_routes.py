"""The hives' model catalogs: list, inspect, remove, disk (pulling is a job: `POST /v1/jobs`).

Inspecting and removing work on any hive: a remote hive reads the model and deletes its files itself.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.contracts.models import ModelEntry
from rbee.hive.model_store import ModelInUse, ModelUnavailable
from rbee.queen import hive_errors
from rbee.queen.errors import Conflict, InvalidRequest, ModelNotFound, UpstreamError
from rbee.queen.guard import principal_of
from rbee.queen.hive_client import HiveCallFailed
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.state import queen_state


def _hives(request: Request) -> list[HiveSeam]:
    return queen_state(request).scheduler.hives_for(request.query_params.get("hive"))


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return int(value)


async def list_catalog(request: Request) -> Response:
    data = []
    for hive in _hives(request):
        data += [{"hive": hive.alias, **e.model_dump(mode="json")} for e in await hive.catalog.entries()]
    return JSONResponse(data)


async def model_detail(request: Request) -> Response:
    name = request.path_params["name"]
    ctx, slots = _int_param(request, "ctx"), _int_param(request, "slots")
    reasons = []
    for hive in _hives(request):
        try:
            detail = await hive.detail(name, ctx, slots)
        except ModelUnavailable as exc:
            reasons.append(str(exc))
            continue
        return JSONResponse(detail.model_dump(mode="json"))
    raise ModelNotFound(reasons[0] if len(reasons) == 1 else f"No hive has the model '{name}'", param="model")


async def remove_from_catalog(request: Request, name: str, not_found: str | None = None) -> tuple[HiveSeam, ModelEntry]:
    """Remove `name` from the first hive (of those the request names) whose catalog has it, audited; the hive and
    the entry removed. ModelNotFound (with `not_found` as its message, when given) when no hive has it."""
    failed: list[str] = []  # hives that could not be asked: the model may be there
    loads = queen_state(request).scheduler.loads
    for hive in _hives(request):
        busy = [w.id for w in hive.supervisor.workers() if w.spec.model.name == name and loads.peek(w).in_flight]
        if busy:
            raise Conflict(f"'{name}' is answering requests on {', '.join(busy)}; try again when they finish or "
                           "stop those workers first")
        try:
            entry = await hive.remove(name)
        except ModelUnavailable:
            continue
        except ModelInUse as exc:
            raise hive_errors.queen_error(exc) from exc
        except HiveCallFailed as exc:
            failed.append(f"hive '{hive.alias}': {exc}")
            continue
        await queen_state(request).audit(principal_of(request.scope), request, "model.remove", name, hive.alias)
        return hive, entry
    if failed:
        raise UpstreamError(f"could not remove '{name}' ({'; '.join(failed)})")
    raise ModelNotFound(not_found or f"No hive has the model '{name}' in its catalog; `rbee model ls` lists them.",
                        param="model")


async def remove_model(request: Request) -> Response:
    hive, entry = await remove_from_catalog(request, request.path_params["name"])
    return JSONResponse({"hive": hive.alias, **entry.model_dump(mode="json")})


async def storage(request: Request) -> Response:
    """Per hive: how many models, the bytes they take, and the free disk under its models folder."""
    return JSONResponse([(await hive.disk()).model_dump(mode="json") for hive in _hives(request)])


routes = [
    Route("/v1/storage", storage, methods=["GET"]),
    Route("/v1/catalog", list_catalog, methods=["GET"]),
    Route("/v1/catalog/{name:path}", model_detail, methods=["GET"]),
    Route("/v1/catalog/{name:path}", remove_model, methods=["DELETE"]),
]
