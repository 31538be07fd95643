"""Between a remote hive and the queen: enrolment, registration, heartbeats, control.

    keeper -> queen   POST /v1/hives {alias}              -> HiveEnrolled (the join token, shown once)
    hive   -> queen   POST /v1/hives/register  HiveReport -> HiveAck     (Bearer: join token)
    hive   -> queen   POST /v1/hives/heartbeat HiveReport -> HiveAck     (every few seconds)
    queen  -> hive    /v1/hive/...                                       (Bearer: the same token)

A report carries the hive's running workers with their keys, so a restarted queen adopts them
instead of starting them again.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, SecretStr, field_serializer

from rbee.contracts.models import ALIAS_PATTERN, ModelEntry
from rbee.contracts.status import EngineInfo
from rbee.contracts.workers import WorkerInfo, WorkerMode


class HiveState(StrEnum):
    ENROLLED = "enrolled"  # a token exists; the hive has not registered yet
    READY = "ready"
    UNREACHABLE = "unreachable"  # heartbeats stopped; its workers are not used until it returns


class DeviceInfo(BaseModel):
    """A device a hive's workers can run on (see rbee/hive/devices.py)."""

    id: str  # "cpu", "cuda0", "metal", "vulkan1", "rocm0": the engine's name, lower-cased
    name: str  # "NVIDIA GeForce RTX 4090", "CPU (16 threads)"
    backend: str = "cpu"  # which engine build drives it: cpu, cuda, metal, vulkan, rocm
    engine_name: str | None = None  # what llama-server's --device takes ("CUDA0"); None for the CPU
    total_bytes: int
    free_bytes: int | None = None  # live, where a tool reports it
    utilization: float | None = None  # percent
    temperature_c: float | None = None
    failed: str | None = None  # why it cannot take workers now (its driver stopped answering)


class HostedWorker(BaseModel):
    """A worker as its hive reports it: what the queen needs to route to it directly."""

    info: WorkerInfo
    api_key: str
    entry: ModelEntry


class HiveReport(BaseModel):
    alias: str = Field(pattern=ALIAS_PATTERN)
    version: str
    address: str  # where the queen reaches this hive and its workers
    port: int = Field(ge=1, le=65535)
    tls: bool = False  # its API and its workers speak HTTPS, with a certificate from the cluster CA
    engine: EngineInfo
    devices: list[DeviceInfo]
    memory_total: int  # what the hive may give its workers
    models: list[ModelEntry] = []
    workers: list[HostedWorker] = []
    models_free_bytes: int | None = Field(default=None, ge=0, le=2**62)  # free disk under its models folder


class HiveAck(BaseModel):
    accepted: bool = True
    queen_version: str
    heartbeat_s: float
    message: str | None = None  # e.g. a version skew and the command that fixes it


class HiveEnroll(BaseModel):
    alias: str = Field(pattern=ALIAS_PATTERN)


class HiveEnrolled(BaseModel):
    alias: str
    token: str


class HiveStatus(BaseModel):
    """One hive as the queen sees it (`rbee hive list`, `/v1/hives`)."""

    alias: str
    state: HiveState
    address: str | None = None
    port: int | None = None
    version: str | None = None
    devices: list[DeviceInfo] = []
    workers: int = 0
    last_seen_s: float | None = None  # seconds since the last heartbeat
    problem: str | None = None


class WorkerShape(BaseModel):
    """The queen's settings for the model's workers (its models.toml); unset: the hive's own, else defaults."""

    context: int | None = Field(default=None, ge=16, le=2**20)
    slots: int | None = Field(default=None, ge=1, le=512)


class ResolveModel(WorkerShape):
    model: str


class ResolvedModel(BaseModel):
    entry: ModelEntry
    need: int  # bytes a worker of it holds on that hive


class SpawnWorker(WorkerShape):
    model: str
    device: str | None = Field(default=None, max_length=64)  # the hive's id of it; None: the hive picks
    mode: WorkerMode = WorkerMode.GENERATE
    memory: int = 0


class HivePull(BaseModel):
    """queen -> hive `POST /v1/hive/pulls`: download a model there, as a job of the hive's own.

    The hub settings travel with the job: `hf_endpoint` is the queen's `HF_ENDPOINT` (a hive whose own
    environment sets one keeps its own); `hf_token` is the queen's `HF_TOKEN`, used for this job only and
    never stored, logged or put in an event. It is masked in `repr`/`str`; only JSON carries it.
    """

    model: str = Field(min_length=1, max_length=1024)
    hf_endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    hf_token: SecretStr | None = Field(default=None, max_length=4096)

    @field_serializer("hf_token", when_used="json")
    def _reveal(self, token: SecretStr | None) -> str | None:
        return token.get_secret_value() if token is not None else None


class HiveDisk(BaseModel):
    """`GET /v1/storage`: what a hive's models take on its disk, and what is free under its models folder."""

    hive: str
    models: int = 0
    models_bytes: int = 0
    free_bytes: int | None = None  # None: the hive did not say (an older hive)
