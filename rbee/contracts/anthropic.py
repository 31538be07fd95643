"""Anthropic Messages request shapes and Anthropic's error envelope, as the queen checks them before it routes.

Like the OpenAI shapes they keep unknown fields (the worker reads the client's own bytes) and only catch
what the engine would otherwise fail on with a less helpful message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rbee.contracts.base import Contract
from rbee.contracts.openai import MAX_TOKENS, ModelRequest, _Open


class AnthropicMessage(_Open):
    # Anthropic documents "user" and "assistant"; Claude Code also sends others, which llama-server takes
    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]]


class CountTokensRequest(ModelRequest):
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=MAX_TOKENS)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None


class AnthropicErrorBody(Contract):
    type: str
    message: str


class AnthropicError(Contract):
    """`{"type": "error", "error": {"type", "message"}}`, as Anthropic sends it (also as an SSE `error` event)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorBody
