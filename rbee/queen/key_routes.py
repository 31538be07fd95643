"""API keys (create, list, revoke), their usage, and the audit log. Admin only (see guard.py)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.contracts.keys import KeyCreate
from rbee.queen.errors import InvalidRequest
from rbee.queen.guard import principal_of
from rbee.queen.requests import read_json
from rbee.queen.state import queen_state


async def create_key(request: Request) -> Response:
    state = queen_state(request)
    _, spec = await read_json(request, KeyCreate)
    if spec.expires_at is not None and spec.expires_at <= time.time():
        raise InvalidRequest("'expires_at' is in the past.", param="expires_at")
    created = await state.keyring.create(spec)
    limits = ", ".join(f"{k}={v}" for k, v in (("models", spec.models), ("rpm", spec.rpm), ("tpm", spec.tpm),
                                                ("expires_at", spec.expires_at)) if v is not None)
    await state.audit(principal_of(request.scope), request, "key.create", spec.name, limits)
    return JSONResponse(created.model_dump(), status_code=201)


async def list_keys(request: Request) -> Response:
    state = queen_state(request)
    await state.usage.flush()  # so `last_used_at` is current
    return JSONResponse([k.info.model_dump() for k in await state.db.keys()])


async def revoke_key(request: Request) -> Response:
    state = queen_state(request)
    name = request.path_params["name"]
    info = await state.keyring.revoke(name)
    await state.audit(principal_of(request.scope), request, "key.revoke", name)
    return JSONResponse(info.model_dump())


async def usage(request: Request) -> Response:
    state = queen_state(request)
    await state.usage.flush()
    rows = await state.db.usage(request.query_params.get("key"))
    return JSONResponse([row.model_dump() for row in rows])


def _number(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a number", param=name) from None
    if value < 0 or value != value or value == float("inf"):
        raise InvalidRequest(f"'{name}' must be a finite number ≥ 0", param=name)
    return value


async def audit(request: Request) -> Response:
    limit = int(min(_number(request, "limit", 100), 10_000))
    entries = await queen_state(request).db.audit_entries(
        limit, since=_number(request, "since", 0.0), action=request.query_params.get("action"))
    return JSONResponse([e.model_dump() for e in entries])


routes = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{name}", revoke_key, methods=["DELETE"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/audit", audit, methods=["GET"]),
]
