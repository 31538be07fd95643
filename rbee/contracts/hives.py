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

from pydantic import Field

from rbee.contracts.base import Contract
from rbee.contracts.bounds import (
    MAX_DEVICES,
    MAX_MODELS,
    MAX_WORKERS,
    Bytes,
    Celsius,
    HostAddress,
    Name,
    Percent,
    Text,
)
from rbee.contracts.models import ALIAS_PATTERN, ModelEntry
from rbee.contracts.spreads import ChannelInfo, RpcServerInfo, SpreadWorker
from rbee.contracts.status import EngineInfo
from rbee.contracts.workers import WorkerInfo, WorkerMode


class HiveState(StrEnum):
    ENROLLED = "enrolled"  # a token exists; the hive has not registered yet
    READY = "ready"
    UNREACHABLE = "unreachable"  # heartbeats stopped; its workers are not used until it returns


DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"


class DeviceInfo(Contract):
    """A device a hive's workers can run on (see rbee/hive/devices.py)."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)  # "cpu", "cuda0", "metal", "vulkan1": the engine's name, lower-cased
    name: Name  # "NVIDIA GeForce RTX 4090", "CPU (16 threads)"
    backend: str = Field(default="cpu", pattern=DEVICE_ID_PATTERN)  # the build that drives it: cpu, cuda, metal...
    engine_name: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)  # llama-server's --device ("CUDA0")
    total_bytes: Bytes
    free_bytes: Bytes | None = None  # live, where a tool reports it
    utilization: Percent | None = None
    temperature_c: Celsius | None = None
    failed: Text | None = None  # why it cannot take workers now (its driver stopped answering)


class HostedWorker(Contract):
    """A worker as its hive reports it: what the queen needs to route to it directly."""

    info: WorkerInfo
    api_key: str = Field(max_length=256)
    entry: ModelEntry


class HiveReport(Contract):
    alias: str = Field(pattern=ALIAS_PATTERN)
    version: Name
    address: HostAddress  # where the queen reaches this hive and its workers: the address it connects from
    port: int = Field(ge=1, le=65535)
    tls: bool = False  # its API and its workers speak HTTPS, with a certificate from the cluster CA
    engine: EngineInfo
    devices: list[DeviceInfo] = Field(max_length=MAX_DEVICES)
    memory_total: Bytes  # what the hive may give its workers
    models: list[ModelEntry] = Field(default=[], max_length=MAX_MODELS)
    workers: list[HostedWorker] = Field(default=[], max_length=MAX_WORKERS)
    models_free_bytes: Bytes | None = None  # free disk under its models folder
    channels: list[ChannelInfo] = Field(default=[], max_length=64)  # its ends of spreads' RPC channels
    rpc_servers: list[RpcServerInfo] = Field(default=[], max_length=64)  # devices it lends to spreads


class HiveAck(Contract):
    accepted: bool = True
    queen_version: str
    heartbeat_s: float
    message: str | None = None  # e.g. a version skew and the command that fixes it


class HiveEnroll(Contract):
    alias: str = Field(pattern=ALIAS_PATTERN)
    address: HostAddress | None = None  # where the installer reached the machine: its reports must come from there
    certificate: str | None = Field(default=None, max_length=16384)  # the PEM it was issued (TLS): pinned


class HiveCertificate(Contract):
    """`PUT /v1/hives/{alias}/certificate`: the certificate `rbee tls rotate` gave an installed hive."""

    certificate: str = Field(max_length=16384)


class HiveEnrolled(Contract):
    alias: str
    token: str


class HiveStatus(Contract):
    """One hive as the queen sees it (`rbee hive list`, `/v1/hives`)."""

    alias: str
    state: HiveState
    address: str | None = None
    port: int | None = None
    version: str | None = None
    devices: list[DeviceInfo] = []
    workers: int = 0
    last_seen_s: float | None = None  # seconds since the last heartbeat
    registrations: int = 0  # registrations the queen heard since it started (a restarted hive adds one)
    problem: str | None = None


class WorkerShape(Contract):
    """The queen's settings for the model's workers (its models.toml); unset: the hive's own, else defaults."""

    context: int | None = Field(default=None, ge=16, le=2**20)
    slots: int | None = Field(default=None, ge=1, le=512)
    at_least: int | None = Field(default=None, ge=16, le=2**20)  # a request needs this much: a context set by
    # nobody is at least this (one set by hand stays as it is)


class ResolveModel(WorkerShape):
    model: str


class ResolvedModel(Contract):
    entry: ModelEntry
    need: int  # bytes a worker of it holds on that hive


class SpawnWorker(WorkerShape):
    model: str
    device: str | None = Field(default=None, max_length=64)  # the hive's id of it; None: the hive picks
    mode: WorkerMode = WorkerMode.GENERATE
    memory: int = 0
    spread: SpreadWorker | None = None  # llama-server's part of a spread across hives

