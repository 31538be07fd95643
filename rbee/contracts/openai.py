"""OpenAI request shapes, validated by the queen before it routes.

They are permissive: fields rbee does not know are kept (``extra="allow"``) because the
queen forwards the client's original bytes to the worker; validation only catches what
would otherwise fail deep inside the engine with a less helpful message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from rbee.contracts.base import Contract

HIVE_HEADER = "x-rbee-hive"
"""A request header that pins a request to one hive."""

MAX_TOKENS = 2**20
"""More than any context window a GGUF model has today: a bound that catches nonsense, not a policy."""


TokenId = Annotated[int, Field(strict=True, ge=0, lt=2**31)]
"""A token id as the engine reads it (larger numbers overflow its JSON parser)."""



class _Open(Contract):
    # strict: the worker reads the client's own bytes, so what pydantic would coerce (5.0 for an int,
    # "1" for a number) must be refused here, or the engine fails on it later with a 500.
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool = False


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


class ModelRequest(_Open):
    """Any request the queen routes by its `model` field."""

    model: str = Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")
    keep_alive: str | int | float | None = None


class _Sampling(ModelRequest):
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None


class ToolFunction(_Open):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)  # a JSON schema


class Tool(_Open):
    """A function the model may call: the engine answers any other shape with a 500 ("Failed to parse tools")."""

    type: Literal["function"]
    function: ToolFunction


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    suffix: str | None = None  # fill-in-the-middle: the text after the gap (the queen sends it to /infill)


class EmbeddingRequest(ModelRequest):
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"  # left out, not null: the engine fails on a null (500)


class RerankRequest(ModelRequest):
    """`/v1/rerank` (Jina's and Cohere's shape, as llama-server reads it)."""

    query: str = Field(min_length=1)
    documents: list[str | dict[str, Any]] = Field(min_length=1, max_length=10000)
    top_n: int | None = Field(default=None, ge=1, lt=2**31)  # the engine's int: larger ones overflow (a 500)
    return_documents: bool | None = None


class InfillChunk(_Open):
    text: str
    filename: str | None = None


class InfillRequest(ModelRequest):
    """llama-server's `/infill` (fill-in-the-middle, for editors' tab completion), checked before routing."""

    input_prefix: str
    input_suffix: str
    input_extra: list[InfillChunk] | None = None
    prompt: str | None = None
    stream: bool = False
    n_predict: int | None = Field(default=None, ge=-1, le=MAX_TOKENS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)


AudioFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionRequest(ModelRequest):
    """The form fields of `/v1/audio/transcriptions` and `/v1/audio/translations` (the `file` is checked on its
    own). Not strict: a form's fields are text, so "0.2" is a temperature."""

    model_config = ConfigDict(extra="allow", strict=False)
    response_format: AudioFormat = "json"
    language: str | None = Field(default=None, pattern=r"^(?:[a-z]{2,3}|auto)$")  # ISO-639-1, as OpenAI's
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    prompt: str | None = Field(default=None, max_length=4096)


class ImageRequest(ModelRequest):
    """`POST /v1/images/generations`: OpenAI's fields, and stable-diffusion.cpp's `steps`, `sampler`,
    `cfg_scale` and `negative_prompt`. The size's bound (RBEE_IMAGE_MAX_PIXELS) and its multiples of 64 are
    checked by the route, which names them."""

    prompt: str = Field(min_length=1, max_length=16384)
    size: str = Field(default="512x512", pattern=r"^\d{1,5}x\d{1,5}$")
    n: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    response_format: Literal["b64_json", "url"] = "b64_json"
    steps: int | None = Field(default=None, ge=1, le=150)
    sampler: Literal["euler", "euler_a", "heun", "dpm2", "dpm++2s_a", "dpm++2m", "dpm++2mv2", "ipndm", "ipndm_v",
                     "lcm", "ddim_trailing", "tcd"] | None = None
    cfg_scale: float | None = Field(default=None, ge=0.0, le=30.0)
    negative_prompt: str | None = Field(default=None, max_length=16384)
