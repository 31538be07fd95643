"""Counting requests and tokens per API key and model.

Tokens are read from what the worker already sends: the `usage` object of a JSON answer, or the
last event of a stream (llama-server ends every stream with `timings`, and with `usage` when the
client asked for it). Counters collect in memory and are written to SQLite every few seconds, in
one transaction; a write that fails (a locked database) is kept and retried, never dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import NamedTuple

from rbee.queen.db import QueenDB, UsageDelta
from rbee.queen.errors import QueenError

log = logging.getLogger(__name__)


MAX_COUNT = 10**9  # per request: more is not a token count but a worker gone wrong


def _count(value: object) -> int:
    return min(value, MAX_COUNT) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage_of(event: dict[str, object]) -> object:
    """The `usage` object of an answer or event: at the top (OpenAI, Anthropic's `message_delta`), or inside
    the `response` (Responses' `response.completed`) or the `message` (Anthropic's `message_start`)."""
    if "usage" in event:
        return event["usage"]
    for inner in ("response", "message"):
        nested = event.get(inner)
        if isinstance(nested, dict) and "usage" in nested:
            return nested["usage"]
    return None


class Counts(NamedTuple):
    """The tokens one answer reports: its prompt's (`cached` of them taken from the engine's KV cache), its own."""

    prompt: int
    completion: int
    cached: int = 0


def _details(usage: dict[str, object], field: str) -> int:
    details = usage.get(field)
    return _count(details.get("cached_tokens")) if isinstance(details, dict) else 0


def _tokens_of(event: object) -> Counts | None:
    if not isinstance(event, dict):
        return None
    usage = _usage_of(event)
    timings = event.get("timings")
    if isinstance(usage, dict):
        if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI chat and completions
            cached = _details(usage, "prompt_tokens_details") or (
                _count(timings.get("cache_n")) if isinstance(timings, dict) else 0)
            return Counts(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), cached)
        # Responses and Anthropic; Anthropic counts the cached part of the prompt apart
        prompt = sum(_count(usage.get(k)) for k in ("input_tokens", "cache_read_input_tokens",
                                                    "cache_creation_input_tokens"))
        cached = _count(usage.get("cache_read_input_tokens")) or _details(usage, "input_tokens_details")
        return Counts(min(prompt, MAX_COUNT), _count(usage.get("output_tokens")), cached)
    if isinstance(timings, dict):
        cached = _count(timings.get("cache_n"))
        return Counts(_count(timings.get("prompt_n")) + cached, _count(timings.get("predicted_n")), cached)
    return None


def _stream_tokens(content: bytes) -> Counts | None:
    """The counts of the last SSE event that reports them (`data:` alone, or after an `event:` line)."""
    for event in reversed(content.split(b"\n\n")):
        start = event.find(b"data: {")
        if start < 0 or (start > 0 and event[start - 1:start] != b"\n"):
            continue
        try:
            found = _tokens_of(json.loads(event[start + 6:].split(b"\n", 1)[0]))
        except (ValueError, RecursionError):
            continue
        if found is not None:
            return found
    return None


def counts_in(content: bytes, stream: bool, head: bytes = b"") -> Counts:
    """The tokens reported in a JSON answer or in the tail of an SSE stream; a stream that names its prompt's
    tokens only at its start (Anthropic's `message_start`) has them in `head`."""
    if not stream:
        try:
            return _tokens_of(json.loads(content)) or Counts(0, 0)
        except (ValueError, RecursionError):  # a worker's answer nested too deeply is not counted
            return Counts(0, 0)
    found = _stream_tokens(content) or Counts(0, 0)
    if head and not (found.prompt and found.cached):
        start = _stream_tokens(head) or Counts(0, 0)
        found = Counts(found.prompt or start.prompt, found.completion, found.cached or start.cached)
    return found


def tokens_in(content: bytes, stream: bool, head: bytes = b"") -> tuple[int, int]:
    """(prompt, completion) tokens reported in a JSON answer or in the tail of an SSE stream (`counts_in`)."""
    counts = counts_in(content, stream, head)
    return counts.prompt, counts.completion


class UsageMeter:
    def __init__(self, db: QueenDB) -> None:
        self._db = db
        self._pending: dict[tuple[str, str], list[float]] = {}  # requests, errors, tokens in, out, audio s, images
        self._last_used: dict[str, float] = {}

    def record(self, name: str, model: str, *, prompt: int = 0, completion: int = 0, error: bool = False,
               audio_s: float = 0.0, images: int = 0) -> None:
        counters = self._pending.setdefault((name, model), [0, 0, 0, 0, 0.0, 0])
        counters[0] += 1
        counters[1] += int(error)
        counters[2] += prompt
        counters[3] += completion
        counters[4] += audio_s
        counters[5] += images
        self._last_used[name] = time.time()

    def _merge(self, deltas: Iterable[UsageDelta], last_used: dict[str, float]) -> None:
        for d in deltas:
            counters = self._pending.setdefault((d.name, d.model), [0, 0, 0, 0, 0.0, 0])
            for i, value in enumerate((d.requests, d.errors, d.prompt_tokens, d.completion_tokens, d.audio_seconds,
                                       d.images)):
                counters[i] += value
        for name, at in last_used.items():
            self._last_used[name] = max(at, self._last_used.get(name, 0.0))

    async def flush(self) -> None:
        """Write what was counted since the last flush; on failure keep it for the next one."""
        if not self._pending:
            return
        deltas = [UsageDelta(name, model, int(c[0]), int(c[1]), int(c[2]), int(c[3]), c[4], int(c[5]))
                  for (name, model), c in self._pending.items()]
        last_used = {name: at for name, at in self._last_used.items() if not name.startswith("(")}
        self._pending, self._last_used = {}, {}
        try:
            await self._db.record_usage(deltas, last_used)
        except BaseException as exc:
            self._merge(deltas, last_used)
            if isinstance(exc, QueenError):
                log.warning("usage not written yet, will retry: %s", exc.message)
                return
            raise
