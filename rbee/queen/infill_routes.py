"""Fill-in-the-middle, for editors' tab completion: llama-server's own `/infill`, routed by `model` and
forwarded as bytes; and OpenAI's `suffix` on `/v1/completions`, which the engine refuses, translated in the
queen to `/infill` and back to a `text_completion` (streamed event by event). The model needs FIM tokens
(the worker says so, a 400, when it has none)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.contracts.openai import CompletionRequest, InfillRequest, ModelRequest
from rbee.contracts.workers import WorkerMode
from rbee.queen.errors import InvalidRequest
from rbee.queen.inference import infer
from rbee.queen.proxy import Translation

DEFAULT_MAX_TOKENS = 16  # OpenAI's, for /v1/completions
_FINISH = {"limit": "length", "eos": "stop", "word": "stop"}


async def infill(request: Request) -> Response:
    return await infer(request, InfillRequest, "/infill", WorkerMode.GENERATE)


class SuffixCompletion:
    """One `/infill` answer, as OpenAI's `text_completion` (or its stream of chunks)."""

    media_type: str | None = None  # the worker's: JSON, or SSE

    def __init__(self, model: str, include_usage: bool) -> None:
        self._base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                      "model": model}
        self._include_usage = include_usage
        self._pending = b""

    def _completion(self, native: dict[str, Any], final: bool) -> dict[str, Any]:
        finish = _FINISH.get(str(native.get("stop_type")), "stop") if final else None
        return {**self._base, "choices": [{"text": native.get("content", ""), "index": 0, "logprobs": None,
                                           "finish_reason": finish}]}

    @staticmethod
    def _usage(native: dict[str, Any]) -> dict[str, int]:
        prompt, completion = int(native.get("tokens_evaluated") or 0), int(native.get("tokens_predicted") or 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self, content: bytes) -> bytes:
        native = json.loads(content)
        return json.dumps({**self._completion(native, True), "usage": self._usage(native),
                           **_timings(native)}).encode()

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: {"):
            return event + b"\n\n" if event.strip() else b""  # an error event, passed on as it is
        native = json.loads(event[6:])
        if "error" in native:
            return event + b"\n\n"
        final = bool(native.get("stop"))
        out = b"data: " + json.dumps(self._completion(native, final)).encode() + b"\n\n"
        if final and self._include_usage:
            usage = {**self._base, "choices": [], "usage": self._usage(native), **_timings(native)}
            out += b"data: " + json.dumps(usage).encode() + b"\n\n"
        return out

    def chunk(self, data: bytes) -> bytes:
        *events, self._pending = (self._pending + data).split(b"\n\n")
        return b"".join(self._event(e) for e in events)

    def end(self) -> bytes:
        return self._event(self._pending.strip()) + b"data: [DONE]\n\n"


def _timings(native: dict[str, Any]) -> dict[str, Any]:
    """llama-server's own `timings`, kept beside the usage (as its chat answers carry them)."""
    return {"timings": native["timings"]} if isinstance(native.get("timings"), dict) else {}


def suffix_to_infill(body: bytes, parsed: ModelRequest) -> tuple[str, bytes, Translation]:
    """A `/v1/completions` body with `suffix`, as the worker's `/infill` takes it."""
    return fill_in_middle(body, parsed, DEFAULT_MAX_TOKENS)


def fill_in_middle(body: bytes, parsed: ModelRequest, default_max_tokens: int | None,
                   ) -> tuple[str, bytes, SuffixCompletion]:
    """A completions body with `suffix`, as the worker's `/infill` takes it (`default_max_tokens` where it sets no
    `max_tokens`; None: the engine's, until the model stops)."""
    if not isinstance(getattr(parsed, "prompt", None), str):
        raise InvalidRequest("With `suffix`, `prompt` must be one string: the text before the gap to fill.",
                             param="prompt")
    data = json.loads(body)
    data["input_prefix"], data["input_suffix"] = data.pop("prompt"), data.pop("suffix")
    max_tokens = data.pop("max_tokens", None) or default_max_tokens
    if max_tokens is not None:
        data["n_predict"] = max_tokens
    options = data.pop("stream_options", None) or {}
    return "/infill", json.dumps(data).encode(), SuffixCompletion(parsed.model, bool(options.get("include_usage")))


async def completions(request: Request) -> Response:
    """`/v1/completions`: forwarded as it is, or, with `suffix`, filled in the middle."""
    translator = suffix_to_infill if _has_suffix(await request.body()) else None
    return await infer(request, CompletionRequest, "/v1/completions", WorkerMode.GENERATE, translator=translator)


def _has_suffix(body: bytes) -> bool:
    if b'"suffix"' not in body:
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False  # the contract names what is wrong with it
    return isinstance(data, dict) and data.get("suffix") is not None


routes = [Route("/infill", infill, methods=["POST"])]
