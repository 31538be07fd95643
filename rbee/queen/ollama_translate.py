"""Ollama's wire format, from the OpenAI answers a worker gives: NDJSON lines made event by event as the
worker's SSE stream arrives (no buffering of the answer), or one JSON object for `"stream": false`.

Requests go the other way: an Ollama body becomes the OpenAI body the worker reads, with `options`
mapped onto the engine (`num_predict`, `temperature`, `top_p`, `top_k`, `seed`, `stop`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from rbee.contracts.ollama import OllamaChatRequest, OllamaGenerateRequest, OllamaOptions
from rbee.queen.proxy import Translation

NDJSON = "application/x-ndjson"
_FINISH = {"length": "length", "stop": "stop", "tool_calls": "stop"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 10**6:06d}Z"


def sampling(options: OllamaOptions | None) -> dict[str, Any]:
    """Ollama's `options`, as OpenAI/llama-server fields."""
    if options is None:
        return {}
    mapped: dict[str, Any] = {key: getattr(options, key) for key in ("temperature", "top_p", "top_k", "seed", "stop")
                              if getattr(options, key) is not None}
    if options.num_predict is not None and options.num_predict > 0:
        mapped["max_tokens"] = options.num_predict
    return mapped


def chat_body(parsed: OllamaChatRequest) -> dict[str, Any]:
    messages = [m.model_dump(exclude={"images"}, exclude_none=True) for m in parsed.messages]
    body: dict[str, Any] = {"model": parsed.model, "messages": messages, **sampling(parsed.options)}
    if parsed.tools:
        body["tools"] = [tool.model_dump(exclude_unset=True) for tool in parsed.tools]
    if parsed.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(parsed.format, dict):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": parsed.format}}
    return body


def generate_body(parsed: OllamaGenerateRequest) -> dict[str, Any]:
    messages = [{"role": "system", "content": parsed.system}] if parsed.system else []
    messages.append({"role": "user", "content": parsed.prompt})
    return {"model": parsed.model, "messages": messages, **sampling(parsed.options)}


class OllamaAnswer:
    """One chat completion (or its stream), as Ollama's `/api/chat` or `/api/generate` lines."""

    media_type: str | None = NDJSON

    def __init__(self, model: str, generate: bool) -> None:
        self._model = model
        self._generate = generate
        self._pending = b""
        self._started = time.monotonic_ns()
        self._finish: str | None = None

    def _line(self, text: str, done: bool, **extra: Any) -> bytes:
        body: dict[str, Any] = {"model": self._model, "created_at": _now()}
        if self._generate:
            body["response"] = text
        else:
            body["message"] = {"role": "assistant", "content": text, **extra.pop("message", {})}
        body["done"] = done
        body.update(extra)
        return json.dumps(body).encode() + b"\n"

    def _final(self, usage: dict[str, Any], timings: dict[str, Any], text: str = "", **extra: Any) -> bytes:
        prompt_ms, predicted_ms = float(timings.get("prompt_ms") or 0), float(timings.get("predicted_ms") or 0)
        return self._line(text, True, done_reason=_FINISH.get(self._finish or "stop", "stop"),
                          total_duration=time.monotonic_ns() - self._started, load_duration=0,
                          prompt_eval_count=int(usage.get("prompt_tokens") or 0),
                          prompt_eval_duration=int(prompt_ms * 1e6),
                          eval_count=int(usage.get("completion_tokens") or 0),
                          eval_duration=int(predicted_ms * 1e6), **extra)

    def whole(self, content: bytes) -> bytes:
        answer = json.loads(content)
        choice = answer["choices"][0]
        self._finish = choice.get("finish_reason")
        message = choice.get("message") or {"content": choice.get("text")}  # a chat answer, or a completion
        extra = {"message": {"tool_calls": _tool_calls(message)}} if message.get("tool_calls") else {}
        return self._final(answer.get("usage") or {}, answer.get("timings") or {}, message.get("content") or "",
                           **extra)[:-1]

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: {"):
            return b""  # `data: [DONE]`: the last line was sent with the usage
        data = json.loads(event[6:])
        if "error" in data:
            return json.dumps({"error": str(data["error"].get("message", data["error"]))}).encode() + b"\n"
        out = b""
        for choice in data.get("choices") or []:
            self._finish = choice.get("finish_reason") or self._finish
            text = (choice.get("delta") or {}).get("content") or choice.get("text")
            if text:
                out += self._line(text, False)
        if data.get("usage"):
            out += self._final(data["usage"], data.get("timings") or {})
        return out

    def chunk(self, data: bytes) -> bytes:
        *events, self._pending = (self._pending + data).split(b"\n\n")
        return b"".join(self._event(e.strip()) for e in events)

    def end(self) -> bytes:
        return self._event(self._pending.strip())


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {}
        calls.append({"function": {"name": function.get("name", ""), "arguments": arguments}})
    return calls


class Chained:
    """Two translations, one after the other: the worker's answer through `first`, then `second`."""

    def __init__(self, first: Translation, second: Translation) -> None:
        self._first, self._second = first, second
        self.media_type = second.media_type or first.media_type

    def whole(self, content: bytes) -> bytes:
        return self._second.whole(self._first.whole(content))

    def chunk(self, data: bytes) -> bytes:
        return self._second.chunk(self._first.chunk(data))

    def end(self) -> bytes:
        return self._second.chunk(self._first.end()) + self._second.end()


class OllamaEmbeddings:
    """An OpenAI embeddings answer, as `/api/embed`'s."""

    media_type: str | None = "application/json"

    def __init__(self, model: str, legacy: bool = False) -> None:
        self._model = model
        self._legacy = legacy  # `/api/embeddings`: {"embedding": [...]}

    def whole(self, content: bytes) -> bytes:
        answer = json.loads(content)
        vectors = [item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])]
        if self._legacy:
            return json.dumps({"embedding": vectors[0]}).encode()
        usage = answer.get("usage") or {}
        return json.dumps({"model": self._model, "embeddings": vectors,
                           "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}).encode()

    def chunk(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""
