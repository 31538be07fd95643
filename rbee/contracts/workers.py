"""The worker: one llama-server process holding one model, and its state machine.

    pending -> downloading -> starting -> ready -> draining -> stopped
                    |             |          |         |
                    +-------------+----------+---------+--> error | unreachable

`error` and `stopped` are terminal for a worker id; a restart is a new worker.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class WorkerState(StrEnum):
    PENDING = "pending"
    DOWNLOADING = "downloading"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    ERROR = "error"
    UNREACHABLE = "unreachable"


class WorkerMode(StrEnum):
    """What a worker was started for: llama-server needs `--embeddings` for vectors."""

    GENERATE = "generate"
    EMBED = "embed"


_S = WorkerState
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _S.PENDING: frozenset({_S.DOWNLOADING, _S.STARTING, _S.STOPPED, _S.ERROR}),
    _S.DOWNLOADING: frozenset({_S.STARTING, _S.STOPPED, _S.ERROR}),
    _S.STARTING: frozenset({_S.READY, _S.DRAINING, _S.STOPPED, _S.ERROR}),
    _S.READY: frozenset({_S.DRAINING, _S.STOPPED, _S.ERROR, _S.UNREACHABLE}),
    _S.DRAINING: frozenset({_S.STOPPED, _S.ERROR}),
    _S.UNREACHABLE: frozenset({_S.READY, _S.DRAINING, _S.STOPPED, _S.ERROR}),
    _S.STOPPED: frozenset(),
    _S.ERROR: frozenset(),
}


class InvalidTransition(ValueError):
    """A worker was asked to move to a state its current state cannot reach."""


def check_transition(current: WorkerState, new: WorkerState) -> None:
    """Raise `InvalidTransition` unless `current -> new` is an edge of the state machine."""
    if new not in WORKER_TRANSITIONS[current]:
        raise InvalidTransition(f"worker cannot go from {current} to {new}")


class WorkerInfo(BaseModel):
    id: str
    model: str
    hive: str
    mode: WorkerMode = WorkerMode.GENERATE
    state: WorkerState
    url: str | None = None
    pid: int | None = None
    slots: int
    context_size: int
    started_at: float
    in_flight: int = 0
    error: str | None = None
    memory_bytes: int = 0
    device: str = "cpu"  # the hive's id of the device it runs on
    idle_unload_in_s: float | None = None
