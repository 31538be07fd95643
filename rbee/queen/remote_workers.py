"""The workers of a remote hive as the queen sees them: what the hive's reports say, held to the worker state
machine (rbee/contracts/workers.py) as the hive's own `WorkerProcess` is.

A report can only move a worker along an edge of that machine. One that would move it backwards (a READY
worker reported STARTING), out of a terminal state (ERROR to READY) or sideways (DRAINING to READY) is refused
and logged, and changes nothing of the worker: a heartbeat built before a change the queen already knows of
(the common, harmless case) and a hostile hive look alike here, and neither rewrites the queen's view.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote

from rbee.contracts.hives import HostedWorker
from rbee.contracts.models import ModelEntry
from rbee.contracts.slots import SaveAndStop, SlotSave, Stopped
from rbee.contracts.workers import (
    WORKER_TRANSITIONS,
    WorkerInfo,
    WorkerMode,
    WorkerState,
    check_transition,
    memory_held,
)
from rbee.queen.hive_client import HiveCallFailed, HiveClient

log = logging.getLogger(__name__)

_S = WorkerState
_BEHIND = (_S.PENDING, _S.STARTING, _S.READY)  # what a heartbeat built before a drain or a start may still say
_TERMINAL = (_S.STOPPED, _S.ERROR)


@dataclass(frozen=True)
class RemoteSpec:
    model: ModelEntry
    mode: WorkerMode
    slots: int
    context_per_slot: int
    cache_ram_mib: int = 0  # its host-memory prompt cache, as its hive reports it


class RemoteWorker:
    """A worker on a remote hive; its state comes from the hive (its load counters: the queen's, loads.py)."""

    def __init__(self, hive: str, hosted: HostedWorker | None = None, *, worker_id: str = "",
                 spec: RemoteSpec | None = None, memory: int = 0, placeholder: bool = False) -> None:
        self.hive = hive
        self.placeholder = placeholder  # stands for a worker the hive is starting, until it answers
        self.failed_at: float | None = None
        self.error: str | None = None
        self.id = worker_id
        self.state = WorkerState.STARTING
        self.url: str | None = None
        self.api_key = ""
        self.started_at = time.time()
        self.memory = memory
        self.device = "cpu"
        self.device_memory: dict[str, int] = {}
        self.offload: str | None = None
        self.tls: ssl.SSLContext | None = None  # how the queen checks it: its hive's pinned certificate
        self._refused: set[tuple[WorkerState, WorkerState]] = set()  # moves already logged as refused
        if spec is not None:
            self.spec = spec
        if hosted is not None:  # first sight: the state the hive says (a stopped or failed one is not adopted)
            self.state = hosted.info.state
            self.error = hosted.info.error
            self._take(hosted)

    def _take(self, hosted: HostedWorker) -> None:
        info = hosted.info
        self.id = info.id
        self.spec = RemoteSpec(hosted.entry, info.mode, info.slots, info.context_size, info.cache_ram_mib)
        self.url, self.api_key = info.url, hosted.api_key  # started_at stays the queen's: tie-breaks use it
        self.memory = info.memory_bytes
        self.device = info.device
        self.device_memory = info.device_memory
        self.offload = info.offload

    def update(self, hosted: HostedWorker) -> bool:
        """Its hive's report of it: taken when the state it says is this one or one this worker can reach from
        it; else refused (logged once per move) and nothing changes. Whether it was taken."""
        new = hosted.info.state
        if new is not self.state and new not in WORKER_TRANSITIONS[self.state]:
            self._refuse(new)
            return False
        self._take(hosted)
        if new is not self.state:
            self._set(new, hosted.info.error)
        return True

    def _refuse(self, new: WorkerState) -> None:
        if (self.state, new) in self._refused:
            return
        self._refused.add((self.state, new))
        stale = self.state in (_S.READY, _S.DRAINING) and new in _BEHIND
        log.log(logging.DEBUG if stale else logging.WARNING,
                "hive %s reported worker %s as %s, but it is %s here and a worker cannot go from %s to %s: "
                "that report of it is refused", self.hive, self.id, new, self.state, self.state, new)

    def _set(self, state: WorkerState, error: str | None = None) -> None:
        check_transition(self.state, state)
        if state is WorkerState.ERROR:
            self.failed_at = time.monotonic()
        self.state = state
        if error:
            self.error = error

    def fail(self, message: str) -> None:
        if self.state not in _TERMINAL:
            self._set(WorkerState.ERROR, message)

    def begin_drain(self) -> None:
        if self.state in (WorkerState.READY, WorkerState.UNREACHABLE):
            self._set(WorkerState.DRAINING)

    def stopped(self) -> None:
        """The queen stopped it (or gave up on it): stopped, unless it had failed already."""
        if WorkerState.STOPPED in WORKER_TRANSITIONS[self.state]:
            self._set(WorkerState.STOPPED)

    def unreachable(self) -> None:
        if self.state is WorkerState.READY:
            self._set(WorkerState.UNREACHABLE)

    def held(self) -> dict[str, int]:
        """The memory it holds on each of its devices (as its hive said; split evenly while it starts)."""
        return self.device_memory or memory_held(self.device, self.memory)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id, model=self.spec.model.name, hive=self.hive, mode=self.spec.mode, state=self.state,
            url=self.url, slots=self.spec.slots, context_size=self.spec.context_per_slot,
            started_at=self.started_at, error=self.error, memory_bytes=self.memory, device=self.device,
            device_memory=self.held(), offload=self.offload,
        )


class RemoteSupervisor:
    """The remote hive's workers, kept as its reports say (`reconcile`), and stopped through its API."""

    def __init__(self, alias: str, client: HiveClient) -> None:
        self._alias = alias
        self._client = client
        self._workers: dict[str, RemoteWorker] = {}
        self._stopped: set[str] = set()  # stopped here: a heartbeat sent before the hive heard of it must not revive it

    def workers(self) -> list[RemoteWorker]:
        return list(self._workers.values())

    def get(self, worker_id: str) -> RemoteWorker | None:
        return self._workers.get(worker_id)

    def add(self, worker: RemoteWorker) -> None:
        worker.tls = self._client.tls
        self._workers[worker.id] = worker

    def keep(self, worker: RemoteWorker) -> None:
        """List a failed worker again after its process was stopped (a spread that ended: its reason stays)."""
        self._workers[worker.id] = worker

    def discard(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def use_tls(self, context: ssl.SSLContext | None) -> None:
        for worker in self._workers.values():
            worker.tls = context

    async def stop(self, worker_id: str) -> RemoteWorker | None:
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return None
        worker.begin_drain()
        if not worker.placeholder:
            try:
                await self._client.call("DELETE", f"/v1/hive/workers/{quote(worker_id, safe='')}")
                self._stopped.add(worker_id)
            except HiveCallFailed as exc:  # it will be listed (and adopted) again if it still runs there
                log.warning("could not stop %s on %s: %s", worker_id, self._alias, exc)
        worker.stopped()
        return worker

    async def save_and_stop(self, worker_id: str, save: list[SlotSave], wait_s: float) -> Stopped | None:
        """Ask the hive to save `save` then stop the worker (rbee/hive/slot_cache.py); None if it is not known
        here. `HiveCallFailed` leaves the worker as it was, for a plain `stop`; its answer is validated."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.placeholder:
            return None
        worker.begin_drain()
        raw = await self._client.call("POST", f"/v1/hive/workers/{quote(worker_id, safe='')}/stop",
                                      SaveAndStop(save=save).model_dump_json(), wait_s=wait_s)
        self._workers.pop(worker_id, None)
        self._stopped.add(worker_id)
        worker.stopped()
        return Stopped.model_validate_json(raw)

    def forget_dead(self, keep: int = 20) -> None:
        dead = [w for w in self._workers.values() if w.state in _TERMINAL]
        for worker in dead[: max(0, len(dead) - keep)]:
            self._workers.pop(worker.id, None)

    def reconcile(self, reported: list[HostedWorker]) -> list[str]:
        """Take the hive's word for which workers exist: adopt new ones, update known ones (as the state machine
        allows), drop gone ones; the ids adopted."""
        seen, adopted_ids = set(), []
        for hosted in reported:
            seen.add(hosted.info.id)
            known = self._workers.get(hosted.info.id)
            if known is not None:
                known.update(hosted)
            elif hosted.info.state not in _TERMINAL and hosted.info.id not in self._stopped:
                self._adopt(hosted)
                adopted_ids.append(hosted.info.id)
        self._stopped &= seen  # the hive no longer lists them: forget them
        for worker_id, worker in list(self._workers.items()):
            if worker_id not in seen and not worker.placeholder and worker.state is not WorkerState.ERROR:
                self._workers.pop(worker_id)  # the hive forgot it (stopped, or the hive restarted)
        return adopted_ids

    def _adopt(self, hosted: HostedWorker) -> None:
        log.info("adopting worker %s (%s) on %s", hosted.info.id, hosted.entry.name, self._alias)
        self.add(RemoteWorker(self._alias, hosted))  # unloaded when idle too (queen/executor.py)

    def mark_unreachable(self) -> None:
        for worker in self._workers.values():
            worker.unreachable()

