"""A lease: one request's hold on a worker, and (prefix affinity, issue 20) on one of its llama-server slots.

The scheduler (scheduler.py) decides which worker; `take` reserves it: one more request in flight (loads.py)
and, for a generating worker while affinity is on, a slot id that no other lease holds, the one affinity.py
prefers when it is free. The request's body then names that slot (`id_slot`, inference.py `for_slot`), and the
slot's chain is remembered for the next turn. `Lease.release()` gives both back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rbee.contracts.workers import WorkerMode
from rbee.queen import keep_alive as keep_alive_mod
from rbee.queen.affinity import Affinity, Key, Preference
from rbee.queen.hive_seam import AnyWorker

if TYPE_CHECKING:
    from rbee.queen.scheduler import Scheduler

__all__ = ["Lease", "free_slots", "take", "with_slot"]


@dataclass
class Lease:
    """A worker reserved for one request; `release()` exactly once when the request ends."""

    worker: AnyWorker
    keep_alive: float
    scheduler: Scheduler
    slot: int | None = None  # the llama-server slot it holds (None: affinity off, or a worker without slots)
    hit: bool | None = None  # it went where its prefix is (None: affinity off, or nothing to match)
    restore: str | None = None  # the key of a saved KV cache to restore into its slot first (kv_resume.py)
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        load = self.scheduler.loads.of(self.worker)
        load.in_flight -= 1
        if self.slot is not None:
            load.busy.discard(self.slot)
        load.last_used = now = time.monotonic()
        load.expires_at = None if self.keep_alive == keep_alive_mod.FOREVER else now + self.keep_alive
        if self.keep_alive == 0 and load.in_flight == 0:
            self.scheduler.executor.unload_soon(self.worker)
        self.scheduler.slot_freed(self.worker)


def slotted(worker: AnyWorker, table: Affinity | None) -> bool:
    """Whether leases on `worker` name a slot: affinity is on and it is a llama-server that generates."""
    return table is not None and worker.spec.mode is WorkerMode.GENERATE


def free_slots(scheduler: Scheduler, ready: list[AnyWorker]) -> dict[str, list[int]]:
    """The free slot ids of each worker in `ready` whose leases name one."""
    return {w.id: scheduler.loads.peek(w).free_slots(w.spec.slots) for w in ready
            if slotted(w, scheduler.affinity)}


def take(scheduler: Scheduler, worker: AnyWorker, seconds: float, key: Key | None, preference: Preference,
         free: dict[str, list[int]]) -> Lease:
    """Reserve `worker` (and a free slot of it) for one request of `key` (None: a request that runs on no slot,
    such as counting tokens)."""
    load = scheduler.loads.of(worker)
    load.in_flight += 1
    load.expires_at = None
    table = scheduler.affinity
    if table is None or key is None or not free.get(worker.id):
        return Lease(worker, seconds, scheduler)
    slot = table.slot_for(worker.id, free[worker.id], preference)
    load.busy.add(slot)
    table.record(worker.id, slot, key, spill=worker.spec.cache_ram_mib > 0)
    return Lease(worker, seconds, scheduler, slot, preference.worker == worker.id if key.chain else None)


def with_slot(body: bytes, slot: int | None) -> bytes:
    """The request's JSON body with `"id_slot": slot` added at its end (llama-server reads JSON keys last-wins,
    so a client's own `id_slot` is overridden: the queen knows which slots are free, the client does not).
    `slot` None: the body as it is."""
    if slot is None:
        return body
    end = body.rstrip()
    if not end.endswith(b"}"):
        return body
    comma = b"" if end[:-1].rstrip().endswith(b"{") else b","
    return b"%s%s\"id_slot\":%d}" % (end[:-1], comma, slot)
