"""The worker: one llama-server process holding one model, and its state machine.

    pending -> starting -> ready -> draining -> stopped
                   |          |         |
                   +----------+---------+--> error | unreachable

`error` and `stopped` are terminal for a worker id; a restart is a new worker. A worker exists once its
model is on its hive: getting the model there (a pull, a LAN copy) is a job with its own progress, and a
request waiting for it is counted among the waiting (`/v1/status`), so there is no "downloading" worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydantic import Field, model_validator

from rbee.contracts.base import Contract
from rbee.contracts.bounds import Bytes, Count, Name, Seconds, Text, WorkerId


class WorkerState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    ERROR = "error"
    UNREACHABLE = "unreachable"


class WorkerMode(StrEnum):
    """What a worker was started for: llama-server needs `--embeddings` for vectors, `--reranking` for
    scores of documents against a query (a reranker: a model whose GGUF says pooling `rank`); a TRANSCRIBE
    worker is whisper.cpp's whisper-server with a speech model (speech to text, and translation to English); an
    IMAGE worker is stable-diffusion.cpp's sd-server with an image model (text to image)."""

    GENERATE = "generate"
    EMBED = "embed"
    RERANK = "rerank"
    TRANSCRIBE = "transcribe"
    IMAGE = "image"


_S = WorkerState
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _S.PENDING: frozenset({_S.STARTING, _S.STOPPED, _S.ERROR}),
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


def front_path(worker_id: str) -> str:
    """Where a hive serves a worker whose engine has no key or TLS of its own (rbee/hive/front.py): the path
    of that worker's URL on the hive's own port."""
    return f"/v1/workers/{worker_id}/engine"


class WorkerPart(Contract):
    """One device a worker spread across hives uses: its hive, its share of the layers, the memory booked there."""

    hive: Name
    device: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,256}$")
    share: float = Field(ge=0, le=1)
    memory_bytes: Bytes = 0


class WorkerInfo(Contract):
    """A worker as its hive (or the queen) shows it; bounded, since remote hives report these."""

    id: WorkerId
    model: Name
    hive: Name
    mode: WorkerMode = WorkerMode.GENERATE
    state: WorkerState
    url: str | None = Field(default=None, max_length=256)  # the queen builds its own from the hive's address
    pid: Count | None = None
    slots: int = Field(ge=0, le=4096)
    context_size: int = Field(ge=0, le=2**24)
    cache_ram_mib: int = Field(default=0, ge=0, le=2**20)  # its host-memory prompt cache (--cache-ram); 0: none
    started_at: Seconds
    in_flight: Count = 0
    error: Text | None = None
    memory_bytes: Bytes = 0
    device: str = Field(default="cpu", pattern=r"^[A-Za-z0-9_.+-]{1,256}$")  # "cuda0+cuda1": spread over both
    device_memory: dict[str, Bytes] = Field(default={}, max_length=64)  # memory_bytes per device (filled in)
    offload: str | None = Field(default=None, max_length=200)  # "cuda0 24/33 layers + cpu 9/33": layers in RAM
    parts: list[WorkerPart] = Field(default=[], max_length=64)  # a spread across hives: every device, any hive
    idle_unload_in_s: Seconds | None = None

    @model_validator(mode="after")
    def _held_per_device(self) -> WorkerInfo:
        if not self.device_memory:
            self.device_memory = memory_held(self.device, self.memory_bytes)
        return self


TIMEOUT_HEADER = "x-rbee-timeout"
"""A request's deadline in seconds from now: from the client to the queen, and what is left of it from the queen
to the worker (a hive's front cuts its engine there)."""
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.1, 86400.0

ENGINE_GONE = "engine_gone"
"""The `code` of a hive front's 502 when a fronted worker's engine died before it answered: the queen takes it as
the worker gone, as when a worker on its own machine drops the connection, and retries once elsewhere."""


def timeout_seconds(raw: str) -> float | None:
    """The seconds an X-Rbee-Timeout header gives, or None unless it is a number in [MIN_TIMEOUT_S, MAX_TIMEOUT_S]."""
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if MIN_TIMEOUT_S <= seconds <= MAX_TIMEOUT_S else None
