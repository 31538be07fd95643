"""The worker: one llama-server process holding one model, and its state machine.

    pending -> downloading -> starting -> ready -> draining -> stopped
                    |             |          |         |
                    +-------------+----------+---------+--> error | unreachable

`error` and `stopped` are terminal for a worker id; a restart is a new worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, model_validator


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


def memory_held(device: str, memory: int, weights: Sequence[int] = ()) -> dict[str, int]:
    """What a worker holds on each device it runs on: all of it on one device; spread over several GPUs
    ("cuda0+cuda1"), in proportion to `weights` (its --tensor-split; equal parts when not known)."""
    parts = device.split("+")
    if len(parts) == 1:
        return {device: memory}
    shares = list(weights) if len(weights) == len(parts) and sum(weights) > 0 else [1] * len(parts)
    held = {part: memory * share // sum(shares) for part, share in zip(parts, shares, strict=True)}
    held[parts[0]] += memory - sum(held.values())
    return held


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
    device: str = "cpu"  # the hive's id of the device it runs on; "cuda0+cuda1" for a model spread over both
    device_memory: dict[str, int] = {}  # memory_bytes per device (filled in when not given)
    idle_unload_in_s: float | None = None

    @model_validator(mode="after")
    def _held_per_device(self) -> WorkerInfo:
        if not self.device_memory:
            self.device_memory = memory_held(self.device, self.memory_bytes)
        return self
