"""Ollama API request shapes (`/api/*`), as the queen checks them before it translates them.

Unknown fields are kept but not forwarded: the queen writes the worker's OpenAI body itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rbee.contracts.openai import MAX_TOKENS, ChatMessage, ModelRequest


class OllamaOptions(BaseModel):
    """The `options` rbee maps onto the engine (`num_ctx`: a worker with at least that context per slot); others
    (`mirostat`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    num_predict: int | None = Field(default=None, ge=-2, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: list[str] | None = None
    num_ctx: int | None = Field(default=None, ge=1, le=2**20)


class OllamaMessage(ChatMessage):
    images: list[str] | None = None


class _Generating(ModelRequest):
    stream: bool = True  # Ollama streams unless told not to
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = None


class OllamaChatRequest(_Generating):
    messages: list[OllamaMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_Generating):
    prompt: str = ""
    suffix: str | None = None  # fill-in-the-middle: the text after the gap (the queen sends it to /infill)
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


class _Named(BaseModel):
    """A model management request: `model` (older clients send `name`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")

    @model_validator(mode="before")
    @classmethod
    def _older_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" not in data and "name" in data:
            return {**data, "model": data["name"]}
        return data


class OllamaPullRequest(_Named):
    stream: bool = True
    insecure: bool | None = None  # accepted and ignored: rbee pulls from the hub rbee is set up for


class OllamaDeleteRequest(_Named):
    pass
