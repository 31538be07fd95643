"""Reading a request body into a contract, with 400s that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from rbee.queen.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def field_of(parsed: BaseModel, name: str) -> Any:
    """`getattr(parsed, name, None)` for a field of a request's body, declared by its contract or not (the
    contracts keep unknown fields), without pydantic's costly miss (an AttributeError raised and caught, a few
    microseconds) for one its contract does not declare: asked several times per request."""
    if name in type(parsed).model_fields:
        return getattr(parsed, name)
    extra = parsed.__pydantic_extra__
    return extra.get(name) if extra is not None else None


def parse_body(body: bytes, model: type[M]) -> M:
    """Validate a JSON body; raise `InvalidRequest` naming the first bad field."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply to be read.") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return validate(data, model)


def validate(data: dict[str, object], model: type[M]) -> M:
    """Validate a request's fields (a JSON object's, or a form's); raise `InvalidRequest` naming the first bad
    field."""
    try:
        return model.model_validate(data)
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply to be read.") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = f"Invalid value for '{param}': {first['msg']}" if param else f"Invalid request: {first['msg']}"
        raise InvalidRequest(message, param=param,
                             code="invalid_value" if first["type"] != "missing" else "missing_field") from exc


async def read_json(request: Request, model: type[M]) -> tuple[bytes, M]:
    body = await request.body()
    return body, parse_body(body, model)
