"""Rerank (`/v1/rerank`, and the `/rerank` and `/v2/rerank` spellings RAG clients use): routed by `model` to a
worker started with `--reranking`, and forwarded as bytes; errors in OpenAI's shape."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.contracts.openai import RerankRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.inference import infer

RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")


async def rerank(request: Request) -> Response:
    return await infer(request, RerankRequest, "/v1/rerank", WorkerMode.RERANK)


routes = [Route(path, rerank, methods=["POST"], name=f"rerank{i or ''}") for i, path in enumerate(RERANK_PATHS)]
