"""What the queen reports about itself and the colony."""

from __future__ import annotations

from pydantic import BaseModel

from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerInfo


class QueenHealth(BaseModel):
    service: str = "rbee-queen"
    status: str = "ok"
    version: str
    pid: int
    started_at: float
    listen_host: str | None = None  # where it listens; beyond loopback when hives are enrolled


class EngineInfo(BaseModel):
    path: str | None
    version: str | None = None
    source: str | None = None  # "configured", "path", "built"
    problem: str | None = None


class HiveInfo(BaseModel):
    alias: str
    state: str
    address: str
    version: str
    engine: EngineInfo


class StatusReport(BaseModel):
    queen: QueenHealth
    hives: list[HiveInfo]
    workers: list[WorkerInfo]
    models: list[ModelEntry]
