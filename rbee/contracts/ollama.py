"""Ollama API request shapes (`/api/*`), as the queen checks them before it translates them.

Unknown fields are kept but not forwarded: the queen writes the worker's OpenAI body itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rbee.contracts.openai import MAX_TOKENS, ChatMessage, ModelRequest, Tool


class OllamaOptions(BaseModel):
    """The `options` rbee maps onto the engine; others (`num_ctx`, `mirostat`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    num_predict: int | None = Field(default=None, ge=-2, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: list[str] | None = None


class OllamaMessage(ChatMessage):
    images: list[str] | None = None


class _Generating(ModelRequest):
    stream: bool = True  # Ollama streams unless told not to
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = None


class OllamaChatRequest(_Generating):
    messages: list[OllamaMessage] = Field(min_length=1)
    tools: list[Tool] | None = None  # OpenAI's shape


class OllamaGenerateRequest(_Generating):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None


class OllamaEmbedRequest(ModelRequest):
    input: str | list[str] = Field(min_length=1)


class OllamaEmbeddingsRequest(ModelRequest):
    """The older `/api/embeddings`: one `prompt`, one `embedding`."""

    prompt: str = Field(min_length=1)


class OllamaShowRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=512)
