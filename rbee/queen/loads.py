"""The queen's own counters per worker (issue 19): its requests in flight, the slots they hold (issue 20), when
it was last used, and when its keep_alive runs out. The hives' workers (rbee/hive/worker.py, remote_hive.py
RemoteWorker) hold what their hive reports; what the queen's leases do to a worker is kept here, keyed by the
worker's id."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rbee.contracts.workers import WorkerInfo


class _Worker(Protocol):
    id: str
    started_at: float  # wall clock

    def info(self) -> WorkerInfo: ...


@dataclass
class Load:
    in_flight: int
    last_used: float  # monotonic
    expires_at: float | None  # monotonic; None: never unloaded for idleness
    busy: set[int] = field(default_factory=set)  # the slot ids its leases hold (affinity.py)

    def free_slots(self, slots: int) -> list[int]:
        """The slot ids (0 to `slots` - 1) no lease holds."""
        return [s for s in range(slots) if s not in self.busy] if len(self.busy) < slots else []


class Loads:
    def __init__(self) -> None:
        self._by_id: dict[str, Load] = {}

    def peek(self, worker: _Worker) -> Load:
        """Its counters, read only: a worker the queen has not leased or started yet is idle since it started."""
        load = self._by_id.get(worker.id)
        if load is not None:
            return load
        return Load(0, time.monotonic() - max(0.0, time.time() - worker.started_at), None)

    def of(self, worker: _Worker) -> Load:
        """Its counters, to change them (recorded from now on)."""
        load = self._by_id.get(worker.id)
        if load is None:
            load = self._by_id[worker.id] = self.peek(worker)
        return load

    def started(self, worker: _Worker, hold: float) -> None:
        """The queen started `worker`: its keep_alive (`hold` seconds, inf: forever) runs from now, in case no
        request comes."""
        self.of(worker).expires_at = None if hold == float("inf") else time.monotonic() + hold

    def adopted(self, worker: _Worker, hold: float) -> None:
        """A worker found running (a remote hive reported it): unloaded when idle for `hold`, as if just started."""
        if worker.id not in self._by_id:
            self.started(worker, hold)

    def forget(self, live: Iterable[str]) -> None:
        """Drop the counters of workers that are gone (`live`: the ids still there)."""
        keep = set(live)
        for worker_id in [w for w in self._by_id if w not in keep]:
            del self._by_id[worker_id]

    def shown(self, worker: _Worker) -> WorkerInfo:
        """`worker.info()` with the queen's counters: requests in flight, seconds until an idle unload."""
        load = self._by_id.get(worker.id)
        info = worker.info()
        if load is None:
            return info
        idle = None if load.expires_at is None else max(0.0, load.expires_at - time.monotonic())
        return info.model_copy(update={"in_flight": load.in_flight, "idle_unload_in_s": idle})
