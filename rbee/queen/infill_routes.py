"""Fill-in-the-middle (`/infill`, llama-server's own shape, for editors' tab completion): routed by `model`
and forwarded as bytes to the worker; the model needs FIM tokens (the worker says so when it has none)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.contracts.openai import InfillRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.inference import infer


async def infill(request: Request) -> Response:
    return await infer(request, InfillRequest, "/infill", WorkerMode.GENERATE)


routes = [Route("/infill", infill, methods=["POST"])]
