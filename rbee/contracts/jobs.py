"""Jobs: long management operations with a stream of events (DESIGN.md decision 4).

`POST /v1/jobs` -> `JobCreated`; `GET /v1/jobs/{id}/events` streams `JobEvent`s as SSE
until a terminal one (`done`, `error`, `cancelled`); `DELETE /v1/jobs/{id}` cancels.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from rbee.contracts.base import Contract


class JobKind(StrEnum):
    ENGINE_INSTALL = "engine.install"
    WORKER_SPAWN = "worker.spawn"
    MODEL_PULL = "model.pull"


class JobEventType(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    LOG = "log"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobEventType.DONE, JobEventType.ERROR, JobEventType.CANCELLED)


class JobCreate(Contract):
    kind: JobKind
    hive: str | None = None  # None: model.pull chooses where it runs best; other kinds take the first hive
    model: str | None = None
    force: bool = False
    device: str | None = Field(default=None, max_length=1200)  # worker.spawn: the hive's device, or HIVE:DEV+..
    backend: str | None = Field(default=None, max_length=16)  # engine.install: cpu, cuda, metal, vulkan, rocm
    engine: str = Field(default="llama", pattern=r"^(llama|whisper|sd)$")  # engine.install: which engine


class JobCreated(Contract):
    job_id: str


class JobEvent(Contract):
    job_id: str
    seq: int
    type: JobEventType
    message: str = ""
    current: float | None = None
    total: float | None = None
    unit: str | None = None
    data: dict[str, Any] | None = None


class JobInfo(Contract):
    job_id: str
    kind: JobKind
    state: JobEventType
    created_at: float
    subject: str | None = None  # what it works on: the model, or the hive
    last: JobEvent | None = None  # its latest event: the message to show, and how far it has come
