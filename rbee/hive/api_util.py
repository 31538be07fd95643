"""What every route of a remote hive's API (rbee/hive/app.py) shares: its Hive and job runner, a request body
parsed into its contract, and `Refusal`, the error a route raises for an answer in the API's error shape."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from rbee.common.error_responses import error_response
from rbee.common.jobs import JobRunner
from rbee.hive.service import Hive

M = TypeVar("M", bound=BaseModel)


def hive_of(request: Request) -> Hive:
    hive: Hive = request.app.state.hive
    return hive


async def parse(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Refusal(400, f"Invalid value for '{'.'.join(map(str, first['loc']))}': {first['msg']}") from exc


class Refusal(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return error_response(exc.status, exc.message, code=exc.code)


def jobs_of(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs
