"""Anthropic's Messages API (Claude Code's `ANTHROPIC_BASE_URL`): routed by `model` like chat, and
forwarded as bytes to the worker, whose llama-server speaks the protocol itself.

Every error leaves in Anthropic's shape (error_styles.ANTHROPIC), before a stream as JSON with its status,
after its first byte as an `error` event; tokens are read from Anthropic's usage fields.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.contracts.anthropic import CountTokensRequest, MessagesRequest
from rbee.contracts.openai import ModelRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.error_styles import ANTHROPIC
from rbee.queen.errors import QueenError
from rbee.queen.inference import infer


async def _anthropic(request: Request, contract: type[ModelRequest], path: str) -> Response:
    try:
        return await infer(request, contract, path, WorkerMode.GENERATE, errors=ANTHROPIC)
    except QueenError as exc:
        return ANTHROPIC.response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)


async def messages(request: Request) -> Response:
    return await _anthropic(request, MessagesRequest, "/v1/messages")


async def count_tokens(request: Request) -> Response:
    return await _anthropic(request, CountTokensRequest, "/v1/messages/count_tokens")


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
