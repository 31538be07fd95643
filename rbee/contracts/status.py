"""What the queen reports about itself and the colony."""

from __future__ import annotations

from pydantic import Field

from rbee.contracts.base import Contract
from rbee.contracts.bounds import FilePath, Name, Text
from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerInfo


class QueenHealth(Contract):
    service: str = "rbee-queen"
    status: str = "ok"
    version: str
    pid: int
    started_at: float
    listen_host: str | None = None  # where it listens; beyond loopback when hives are enrolled


class EngineInfo(Contract):
    path: FilePath | None
    version: Name | None = None
    source: Name | None = None  # "configured", "path", "built"
    problem: Text | None = None
    builds: dict[Name, FilePath] = Field(default={}, max_length=16)  # backend -> path: each drives its devices
    speech: FilePath | None = None  # the whisper-server speech workers run (None: none found)
    image: FilePath | None = None  # the sd-server image workers run (None: none found)
    rpc: FilePath | None = None  # llama.cpp's ggml-rpc-server, built beside llama-server (None: none found)


class HiveInfo(Contract):
    alias: str
    state: str
    address: str
    version: str
    engine: EngineInfo


class Traffic(Contract):
    """Totals since the queen started (rates are their differences over time), and what waits now."""

    requests: int = 0
    errors: int = 0  # answered with an HTTP status of 400 or more
    prompt_tokens: int = 0
    completion_tokens: int = 0
    waiting: dict[str, int] = {}  # requests waiting for a worker, per model


class PolicyStatus(Contract):
    """The user policy (RBEE_POLICY): which file, whether it is in use, and what went wrong with it last."""

    path: str | None = None
    loaded: bool = False
    error: str | None = None


class LoopHealth(Contract):
    """A background loop of the queen (keep_alive reaper, hive watch, usage writes, audit pruning)."""

    passes: int = 0  # passes it ran to the end since the queen started (a periodic loop's heartbeat)
    last_pass_at: float | None = None
    failures: int = 0  # times it failed (and was started again) since the queen started
    last_error: str | None = None
    last_failed_at: float | None = None


class StatusReport(Contract):
    queen: QueenHealth
    hives: list[HiveInfo]
    workers: list[WorkerInfo]
    models: list[ModelEntry]
    traffic: Traffic = Field(default_factory=Traffic)
    policy: PolicyStatus = Field(default_factory=PolicyStatus)
    background: dict[str, LoopHealth] = {}
