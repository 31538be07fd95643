"""The queen's OpenAPI 3.1 description, built from its routes and the contracts they read.

Paths and methods come from the app's own routing table (its lazy groups imported first), so the spec cannot
forget a route; the request bodies are the pydantic contracts the routes validate with. Served at `/openapi.json`
(open to everyone: it describes, it grants nothing; a lazy group itself, as this module imports every contract),
and fuzzed in CI with schemathesis.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from rbee import __version__
from rbee.contracts.anthropic import CountTokensRequest, MessagesRequest
from rbee.contracts.hives import HiveCertificate, HiveEnroll, HiveReport
from rbee.contracts.jobs import JobCreate
from rbee.contracts.keys import KeyCreate
from rbee.contracts.ollama import (
    OllamaChatRequest,
    OllamaDeleteRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaPullRequest,
    OllamaShowRequest,
)
from rbee.contracts.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ImageRequest,
    InfillRequest,
    RerankRequest,
    TranscriptionRequest,
)
from rbee.contracts.responses import InputTokensRequest, ResponsesRequest
from rbee.queen.lazy_routes import expanded

BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/v1/chat/completions"): ChatCompletionRequest,
    ("POST", "/v1/completions"): CompletionRequest,
    ("POST", "/v1/embeddings"): EmbeddingRequest,
    ("POST", "/infill"): InfillRequest,
    ("POST", "/api/chat"): OllamaChatRequest,
    ("POST", "/api/generate"): OllamaGenerateRequest,
    ("POST", "/api/embed"): OllamaEmbedRequest,
    ("POST", "/api/embeddings"): OllamaEmbeddingsRequest,
    ("POST", "/api/show"): OllamaShowRequest,
    ("POST", "/api/pull"): OllamaPullRequest,
    ("DELETE", "/api/delete"): OllamaDeleteRequest,
    ("POST", "/v1/rerank"): RerankRequest,
    ("POST", "/rerank"): RerankRequest,
    ("POST", "/v2/rerank"): RerankRequest,
    ("POST", "/v1/messages"): MessagesRequest,
    ("POST", "/v1/messages/count_tokens"): CountTokensRequest,
    ("POST", "/v1/responses"): ResponsesRequest,
    ("POST", "/v1/responses/input_tokens"): InputTokensRequest,
    ("POST", "/v1/jobs"): JobCreate,
    ("POST", "/v1/hives"): HiveEnroll,
    ("PUT", "/v1/hives/{alias}/certificate"): HiveCertificate,
    ("POST", "/v1/hives/register"): HiveReport,
    ("POST", "/v1/hives/heartbeat"): HiveReport,
    ("POST", "/v1/keys"): KeyCreate,
    ("POST", "/v1/images/generations"): ImageRequest,
}
UPLOADS: dict[tuple[str, str], type[BaseModel]] = {  # multipart/form-data: these fields and a `file`
    ("POST", "/v1/audio/transcriptions"): TranscriptionRequest,
    ("POST", "/v1/audio/translations"): TranscriptionRequest,
}
QUERIES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("GET", "/v1/catalog"): {"hive": {"type": "string"}},
    ("GET", "/v1/catalog/{name}"): {"hive": {"type": "string"}, "ctx": {"type": "integer", "minimum": 1},
                                    "slots": {"type": "integer", "minimum": 1}},
    ("DELETE", "/v1/catalog/{name}"): {"hive": {"type": "string"}},
    ("GET", "/v1/storage"): {"hive": {"type": "string"}},
    ("GET", "/v1/usage"): {"key": {"type": "string"}},
    ("GET", "/v1/audit"): {"limit": {"type": "number", "minimum": 0}, "since": {"type": "number", "minimum": 0},
                           "action": {"type": "string"}},
}
INFERENCE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                       "/v1/messages/count_tokens", "/v1/responses", "/v1/responses/input_tokens", "/v1/rerank",
                       "/rerank", "/v2/rerank", "/infill", "/v1/audio/transcriptions", "/v1/audio/translations",
                       "/v1/images/generations"})
HEADERS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    (method, path): {
        "x-rbee-hive": {"type": "string", "description": "serve the request on this hive only"},
        "x-rbee-timeout": {"type": "number", "minimum": 0.1, "maximum": 86400,
                           "description": "seconds until the request is abandoned (504 or an error event)"},
    } for method, path in (*BODIES, *UPLOADS) if path in INFERENCE
}
OPEN = {"/health", "/openapi.json"}
_CONVERTER = re.compile(r"\{(\w+)(?::\w+)?\}")
_ERROR = {"description": "an OpenAI-shaped error: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}"}


def _operation(method: str, path: str, route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = (route.endpoint.__doc__ or route.name.replace("_", " ")).strip().splitlines()[0]
    op: dict[str, Any] = {"operationId": f"{route.name}_{method.lower()}", "summary": doc,
                          "responses": {"200": {"description": "OK"}, "default": _ERROR}}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for name in _CONVERTER.findall(path)]
    params += [{"name": n, "in": "query", "required": False, "schema": s}
               for n, s in QUERIES.get((method, path), {}).items()]
    params += [{"name": n, "in": "header", "required": False, "schema": s}
               for n, s in HEADERS.get((method, path), {}).items()]
    if params:
        op["parameters"] = params
    model = BODIES.get((method, path))
    if model is not None:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    upload = UPLOADS.get((method, path))
    if upload is not None:
        schema = upload.model_json_schema()
        schema["properties"]["file"] = {"type": "string", "contentMediaType": "application/octet-stream",
                                        "description": "the recording: WAV, MP3 or FLAC"}
        schema["required"] = [*schema.get("required", []), "file"]
        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    if path in OPEN:
        op["security"] = []
    return op


def build(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document for `routes` (a Starlette app's routing table)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = _CONVERTER.sub(lambda m: "{" + m.group(1) + "}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(method, path, route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "rbee queen", "version": __version__,
                 "description": "OpenAI-compatible inference across your machines, and rbee's own API."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


async def openapi_spec(request: Request) -> Response:
    """This API's OpenAPI 3.1 description."""
    return JSONResponse(build(await expanded(request.app.routes)))


routes = [Route("/openapi.json", openapi_spec, methods=["GET"])]
