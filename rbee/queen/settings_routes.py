"""Per-model settings through the API: they live in ~/.config/rbee/models.toml (`[models."NAME"]`), which
this reads and writes, so the file and the API always agree. The scheduler reads the file as it changes."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.contracts.models import ModelSettings
from rbee.hive import model_refs
from rbee.queen.errors import HiveNotFound, InvalidRequest, QueenError
from rbee.queen.guard import principal_of
from rbee.queen.requests import read_json
from rbee.queen.state import queen_state


class SettingsUnreadable(QueenError):
    status = 500
    code = "settings_unreadable"


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not name.strip() or len(name) > 512 or any(ord(c) < 32 for c in name):
        raise InvalidRequest("A model name has 1-512 characters and no control characters.", param="name")
    return name


async def list_settings(request: Request) -> Response:
    try:
        found = await asyncio.to_thread(model_refs.all_model_settings)
    except model_refs.BadModelRef as exc:
        raise SettingsUnreadable(str(exc)) from exc
    return JSONResponse({name: own.model_dump(exclude_none=True) for name, own in found.items()})


async def get_settings(request: Request) -> Response:
    try:
        own = await asyncio.to_thread(model_refs.model_settings, _name(request))
    except model_refs.BadModelRef as exc:
        raise SettingsUnreadable(str(exc)) from exc
    return JSONResponse(own.model_dump(exclude_none=True))


async def _save(request: Request, name: str, own: ModelSettings) -> Response:
    """Write a model's settings (all unset: remove them), audit it, and let waiting requests look again."""
    state = queen_state(request)
    try:
        await asyncio.to_thread(model_refs.save_model_settings, name, own)
    except model_refs.BadModelRef as exc:
        raise SettingsUnreadable(str(exc)) from exc
    saved = own.model_dump(exclude_none=True)
    detail = ", ".join(f"{k}={v}" for k, v in saved.items()) or "(removed)"
    await state.audit(principal_of(request.scope), request, "model.settings", name, detail)
    state.scheduler.notify()  # a pin or a replica count may have changed
    return JSONResponse(saved)


async def put_settings(request: Request) -> Response:
    """Replace a model's settings (fields left out are unset); an empty object removes them."""
    state = queen_state(request)
    name = _name(request)
    _, own = await read_json(request, ModelSettings)
    if own.hive is not None and own.hive not in state.hives \
            and own.hive not in {e.alias for e in await state.db.hives()}:
        known = ", ".join(sorted(state.hives)) or "none"
        raise HiveNotFound(f"There is no hive '{own.hive}'. Known hives: {known}", param="hive")
    return await _save(request, name, own)


async def delete_settings(request: Request) -> Response:
    return await _save(request, _name(request), ModelSettings())


routes = [
    Route("/v1/settings/models", list_settings, methods=["GET"]),
    Route("/v1/settings/models/{name:path}", get_settings, methods=["GET"]),
    Route("/v1/settings/models/{name:path}", put_settings, methods=["PUT"]),
    Route("/v1/settings/models/{name:path}", delete_settings, methods=["DELETE"]),
]
