"""Carries the scheduler's decisions out (rbee/queen/decide.py decides): loads, evicting first; LAN copies then
loads; keep_alive unloads; the workers `min_replicas` keeps. One pass of its upkeep (`reap`) runs every
REAP_INTERVAL_S for the queen's lifetime (state.py, supervised by rbee/common/supervise.every).

Every change it makes is reported with `changed()` (the admission queue's waiters look again), and a load that
fails with `failed(key, error)` (the waiters it was for fail with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from rbee.common import settings
from rbee.contracts.hives import WorkerShape
from rbee.contracts.models import ModelEntry, ModelSettings
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive import model_refs
from rbee.queen import copies as copies_mod
from rbee.queen import hive_errors, slot_restore
from rbee.queen import keep_alive as keep_alive_mod
from rbee.queen.errors import InvalidRequest, ModelTooLargeError, QueenError, WorkerUnavailable
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.loads import Loads
from rbee.queen.spill import AnyWorker

log = logging.getLogger(__name__)

Spreader = Callable[[str, QueenError], Coroutine[Any, Any, AnyWorker]]
"""Starts a model no one hive holds across several (set by the queen: rbee/queen/spread_run.py)."""

REAP_INTERVAL_S = 1.0
Key = tuple[str, WorkerMode]


def minimum(name: str) -> int:
    """The `min_replicas` of a model's settings (0 when none, or when models.toml is bad)."""
    try:
        return model_refs.model_settings(name).min_replicas or 0
    except model_refs.BadModelRef:
        return 0


def hold(keep_alive: str | int | float | None, own: ModelSettings) -> float:
    """keep_alive from the request, else the model's settings, else RBEE_KEEP_ALIVE (5m)."""
    for value, param in ((keep_alive, "keep_alive"), (own.keep_alive, None)):
        if value is not None:
            try:
                seconds = keep_alive_mod.parse(value)
            except ValueError as exc:
                if param is None:
                    raise WorkerUnavailable(f"models.toml: {exc}") from exc
                raise InvalidRequest(str(exc), param=param) from exc
            assert seconds is not None
            return seconds
    return keep_alive_mod.parse(settings.keep_alive_default()) or 0.0


def own_settings(name: str) -> ModelSettings:
    try:
        return model_refs.model_settings(name)
    except model_refs.BadModelRef as exc:
        raise WorkerUnavailable(str(exc)) from exc


class Executor:
    def __init__(self, hives: Mapping[str, HiveSeam], loads: Loads, changed: Callable[[], None],
                 failed: Callable[[Key, QueenError], None]) -> None:
        self._hives = hives
        self._loads = loads
        self._changed = changed
        self._failed = failed
        self.loading: dict[Key, asyncio.Task[AnyWorker]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.copies: copies_mod.Copies | None = None  # set by the queen
        # the slots (slot, key) of a worker's most recent conversations, saved when it is unloaded; none by default
        self.recent_slots: slot_restore.RecentSlots = slot_restore.no_recent_slots
        self.slot_record = slot_restore.SlotRecord()  # which hive holds which saved slots

    # -- loads ----------------------------------------------------------------------------------------------
    def load(self, hive: HiveSeam, entry: ModelEntry, mode: WorkerMode, need: int, victims: list[AnyWorker],
             device: str, shape: WorkerShape | None = None) -> None:
        """Stop `victims` (drained now, so no request leases them meanwhile), then start a worker on `device`."""
        for w in victims:
            w.begin_drain()
        self._track((entry.name, mode), self._load(hive, entry, mode, need, victims, device, shape))

    def copy_then_load(self, target: HiveSeam, name: str, mode: WorkerMode, device: str) -> None:
        """Copy the model onto `target` over the LAN (copies.py), then start a worker of it on `device`."""
        self._track((name, mode), self._copy_then_load(target, name, mode, device))

    def track(self, key: Key, work: Coroutine[Any, Any, AnyWorker]) -> None:
        """`work` as the load of `key` (a spread across hives, rbee/queen/spread_run.py): waiters wait for it."""
        self._track(key, work)

    def _track(self, key: Key, work: Coroutine[Any, Any, AnyWorker]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.loading[key] = task
        task.add_done_callback(lambda done: self._loaded(key, done))

    def _loaded(self, key: Key, task: asyncio.Task[AnyWorker]) -> None:
        if self.loading.get(key) is task:
            del self.loading[key]
        failed = None if task.cancelled() else task.exception()
        if isinstance(failed, InvalidRequest):  # a worker without the context the request needs
            self._failed(key, InvalidRequest(failed.message, param=failed.param, code=failed.code))
        elif isinstance(failed, ModelTooLargeError):  # no spread could hold it either: the numbers, as a 400
            self._failed(key, failed)
        elif failed is not None:
            self._failed(key, WorkerUnavailable(str(failed)))
        self._changed()

    async def _copy_then_load(self, target: HiveSeam, name: str, mode: WorkerMode, device: str) -> AnyWorker:
        assert self.copies is not None
        placed = await copies_mod.for_placement(self.copies, target, name)
        need = await target.need(placed.entry)
        return await self._load(target, placed.entry, mode, need, [], device)

    async def _load(self, hive: HiveSeam, entry: ModelEntry, mode: WorkerMode, need: int,
                    evict: list[AnyWorker], device: str, shape: WorkerShape | None = None) -> AnyWorker:
        for w in evict:
            log.info("evicting %s (%s, idle) to make room for %s", w.spec.model.name, w.id, entry.name)
        await asyncio.gather(*(self._stop(hive, w) for w in evict))
        log.info("loading %s on %s:%s (%s, ~%.0f MiB)", entry.name, hive.alias, device, mode, need / 2**20)
        with hive_errors.to_queen(f"Could not start a worker for '{entry.name}' on hive '{hive.alias}'"):
            worker = await hive.spawn_worker(entry, mode, memory=need, shape=shape, device=device)
        # its keep_alive runs from now, in case no request comes (one started for min_replicas)
        self._loads.started(worker, hold(None, own_settings(entry.name)))
        if shape is not None and shape.at_least and worker.spec.context_per_slot < shape.at_least:
            raise InvalidRequest(f"hive '{hive.alias}' started '{entry.name}' with {worker.spec.context_per_slot} "
                                 f"tokens per slot, not the {shape.at_least} this request needs: its own settings "
                                 "fix the context (RBEE_WORKER_CONTEXT, or `context` in its models.toml)",
                                 param="messages", code="context_length_exceeded")
        return worker

    # -- unloads --------------------------------------------------------------------------------------------
    def kept(self, worker: AnyWorker) -> bool:
        """Whether `worker` is one of the `min_replicas` its model keeps loaded."""
        name = worker.spec.model.name
        keep = minimum(name)
        if not keep or worker.spec.mode is not WorkerMode.GENERATE:
            return False
        ready = sorted((w for h in self._hives.values() for w in h.supervisor.workers()
                        if w.spec.model.name == name and w.spec.mode is WorkerMode.GENERATE
                        and w.state is WorkerState.READY), key=lambda w: w.started_at)
        return worker in ready[:keep]

    def unload_soon(self, worker: AnyWorker) -> None:
        """keep_alive 0: unload `worker` now that its last request ended (unless min_replicas keeps it)."""
        if self.kept(worker):
            return
        task = asyncio.get_running_loop().create_task(self.unload(worker, "keep_alive 0"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unload(self, worker: AnyWorker, why: str) -> None:
        for hive in list(self._hives.values()):
            if hive.supervisor.get(worker.id) is worker:
                log.info("unloading %s (%s): %s", worker.spec.model.name, worker.id, why)
                await self._stop(hive, worker)
        self._changed()

    async def _stop(self, hive: HiveSeam, worker: AnyWorker) -> None:
        """Stop a worker, saving its recent conversations' slots first (slot_restore.py) when there are any."""
        await slot_restore.save_then_stop(hive, worker, self.recent_slots(worker.id), self.slot_record)

    async def unload_expired(self) -> None:
        """Unload the idle workers whose keep_alive ran out; a worker found running (adopted from a remote hive)
        gets the default keep_alive; the counters of workers that are gone are dropped."""
        now = time.monotonic()
        workers = [w for hive in list(self._hives.values()) for w in hive.supervisor.workers()]
        self._loads.forget(w.id for w in workers)
        default = hold(None, ModelSettings())
        for w in workers:
            if w.state is not WorkerState.READY:
                continue
            self._loads.adopted(w, default)
            load = self._loads.peek(w)
            if load.in_flight == 0 and load.expires_at is not None and load.expires_at <= now and not self.kept(w):
                await self.unload(w, "keep_alive expired")
