"""Ollama API request shapes (`/api/*`), as the queen checks them before it translates them.

Unknown fields are kept but not forwarded: the queen writes the worker's OpenAI body itself. A model named
the way Ollama names Hugging Face models (`hf.co/org/repo:QUANT`) is read as rbee's name for it
(`rbee_name`), on every route: pulled under one, a model is asked for under the same name.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from rbee.contracts.base import Contract
from rbee.contracts.openai import MAX_TOKENS, ChatMessage, ModelRequest, Tool

_HUB_NAME = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/(?P<name>[^/].*)$", re.IGNORECASE)


def rbee_name(text: str) -> str:
    """Ollama's `hf.co/org/repo:QUANT` (or `huggingface.co/...`) as rbee's `org/repo:QUANT`; `:latest`, Ollama's
    default tag, is the default quantization (`org/repo`). Any other name is rbee's already: as it is."""
    match = _HUB_NAME.match(text.strip())
    return text if match is None else match["name"].removesuffix(":latest")


class _OllamaNamed(Contract):
    """A request whose `model` may be in Ollama's form: read as rbee's name."""

    @field_validator("model", check_fields=False)
    @classmethod
    def _rbee_name(cls, value: str) -> str:
        return rbee_name(value)


class OllamaOptions(Contract):
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


class _Generating(_OllamaNamed, ModelRequest):
    stream: bool = True  # Ollama streams unless told not to
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = None


class OllamaChatRequest(_Generating):
    messages: list[OllamaMessage] = Field(min_length=1)
    tools: list[Tool] | None = None  # OpenAI's shape


class OllamaGenerateRequest(_Generating):
    prompt: str = ""
    suffix: str | None = None  # fill-in-the-middle: the text after the gap (the queen sends it to /infill)
    system: str | None = None
    images: list[str] | None = None


class OllamaEmbedRequest(_OllamaNamed, ModelRequest):
    input: str | list[str] = Field(min_length=1)


class OllamaEmbeddingsRequest(_OllamaNamed, ModelRequest):
    """The older `/api/embeddings`: one `prompt`, one `embedding`."""

    prompt: str = Field(min_length=1)


class OllamaShowRequest(_OllamaNamed):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=512)


class _Named(_OllamaNamed):
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
