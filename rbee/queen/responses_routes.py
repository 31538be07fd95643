"""OpenAI's Responses API (Codex CLI's `wire_api = "responses"`): routed by `model` like chat and forwarded
as bytes to the worker, whose llama-server speaks the protocol itself; errors in OpenAI's shape."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.contracts.responses import InputTokensRequest, ResponsesRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.inference import infer


async def responses(request: Request) -> Response:
    return await infer(request, ResponsesRequest, "/v1/responses", WorkerMode.GENERATE)


async def input_tokens(request: Request) -> Response:
    return await infer(request, InputTokensRequest, "/v1/responses/input_tokens", WorkerMode.GENERATE)


routes = [
    Route("/v1/responses", responses, methods=["POST"]),
    Route("/v1/responses/input_tokens", input_tokens, methods=["POST"]),
]
