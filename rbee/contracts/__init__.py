"""Shapes that cross a process boundary: keeper <-> queen <-> hive <-> worker.

Every side imports these; nothing here does I/O or imports the rest of rbee.
"""

from rbee.contracts.errors import ErrorBody, ErrorEnvelope
from rbee.contracts.jobs import JobCreate, JobCreated, JobEvent, JobEventType, JobInfo, JobKind
from rbee.contracts.models import MemoryNeed, ModelDetail, ModelEntry, ModelList, ModelObject
from rbee.contracts.openai import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ModelRequest,
    StreamOptions,
)
from rbee.contracts.status import EngineInfo, HiveInfo, QueenHealth, StatusReport
from rbee.contracts.workers import (
    WORKER_TRANSITIONS,
    InvalidTransition,
    WorkerInfo,
    WorkerMode,
    WorkerState,
    check_transition,
)

__all__ = [
    "WORKER_TRANSITIONS",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "EngineInfo",
    "ErrorBody",
    "ErrorEnvelope",
    "HiveInfo",
    "InvalidTransition",
    "JobCreate",
    "JobCreated",
    "JobEvent",
    "JobEventType",
    "JobInfo",
    "JobKind",
    "MemoryNeed",
    "ModelDetail",
    "ModelEntry",
    "ModelList",
    "ModelObject",
    "ModelRequest",
    "QueenHealth",
    "StatusReport",
    "StreamOptions",
    "WorkerInfo",
    "WorkerMode",
    "WorkerState",
    "check_transition",
]
