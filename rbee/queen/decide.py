"""Which worker serves a request, or what to do to get one (DESIGN.md decision 5), as pure functions.

For each request:
  (1) the hives to consider: the one pinned with `X-Rbee-Hive`, else all of them (the model's settings in
      models.toml may pin it too); the scheduler builds the views below from those hives only;
  (2) a ready worker of the model with a free slot serves it at once (`serve`): the one whose slot holds the
      start of its conversation (prefix affinity, affinity.py), or a free one on the hive holding more of it
      saved (kv_resume.py), else the least loaded one; in turn:
      a newcomer only when nobody waits for the model; a request that needs a context per slot (a prompt its
      worker refused as too long, Ollama's num_ctx) only one with that much (context_fit.py), and (4) loads
      one with it when there is none;
  (3) else the model must be known to a hive (404 naming it); a request pinned to one hive that lacks it
      waits, within its timeout, while it is copied there from another hive (copies.py);
  (4) a model with no worker is loaded (`may_load`, then `load`): placement by memory (placement.py) picks the
      device and the idle workers to evict, least recently used first, never one with requests in flight; a
      model no device can hold is refused with the numbers; a model whose workers keep dying waits out an
      exponential back-off (`backoff`); when every replica of a model is saturated, one more starts if memory
      is free without evicting anything (up to RBEE_MAX_REPLICAS); for a request pinned nowhere, when the
      hives holding the file cannot make room without killing in-flight requests (or can never hold it), or
      have no free memory for a replica, another hive with room gets a LAN copy and the worker
      (copy_placement.py); a model's settings may pin it to a device, and keep some workers loaded
      (min_replicas: never evicted); a user policy (policy.py) may filter and rank the workers and devices;
      the hive holding the request's saved KV cache goes first when it has room without evicting (`prefer`);
  (5) meanwhile the request waits in a bounded queue (admission.py); workers of a model that has requests
      waiting are not evicted for another model unless that one has waited longer than the grouping cap
      (`GROUPING_CAP_S`), so A B A B is served as A A B B without starving anyone.

Views in, decision out: no I/O, no awaits, no clock but the `now` given (tests/queen/test_scheduler.py).
The scheduler (scheduler.py) asks it, with the views views.py builds; executor.py carries the decisions out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rbee.queen import copy_placement
from rbee.queen.errors import ModelTooLargeError, QueenError, WorkerUnavailable
from rbee.queen.placement import DeviceView, ModelTooLarge, Placement, WorkerView, place

GROUPING_CAP_S = 30.0
BACKOFF_MAX_S = 60

Rank = Callable[[list[DeviceView]], list[DeviceView]]
"""The user policy's order of the devices a worker may go to (those it leaves out are not used)."""


@dataclass(frozen=True)
class Ready:
    """A ready worker of the requested model that the request may use (its hives, its context, not excluded)."""

    id: str
    in_flight: int
    slots: int
    started_at: float


@dataclass(frozen=True)
class Serve:
    worker: str


@dataclass(frozen=True)
class Load:
    """Start a worker on `hive`:`device`, stopping the idle workers `evict` first."""

    hive: str
    device: str
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class CopyThenLoad:
    """Copy the model onto `hive` over the LAN, then start a worker on `device` there."""

    hive: str
    device: str
    reason: str


@dataclass(frozen=True)
class Wait:
    reason: str = ""


@dataclass(frozen=True)
class Refuse:
    error: QueenError


Decision = Serve | Load | CopyThenLoad | Wait | Refuse


# -- (2) ------------------------------------------------------------------------------------------------------
def serve(ready: Sequence[Ready], ordered: bool, turn: bool, prefer: str | None = None,
          tie: str | None = None) -> Serve | None:
    """(2) The worker that serves the request now, if it is its turn and one has a free slot: `prefer` (the one
    holding the request's prefix, affinity.py) if it has one free, else the least busy (then the one holding
    the request's system prompt, `tie`, then the oldest), or the first free one when `ordered` (the user
    policy's order). A preference never makes a request wait: only free workers are chosen from."""
    if not turn:
        return None
    free = [w for w in ready if w.in_flight < w.slots]
    if not free:
        return None
    if prefer is not None and any(w.id == prefer for w in free):
        return Serve(prefer)
    chosen = free[0] if ordered else min(free, key=lambda w: (w.in_flight / w.slots, w.id != tie, w.started_at))
    return Serve(chosen.id)


def may_load(ready: int, loading: bool, replicas: int) -> bool:
    """(4) Whether a worker may be started: none is loading, and there is none, or fewer than `replicas`."""
    return not loading and (ready == 0 or ready < replicas)


# -- (4) ------------------------------------------------------------------------------------------------------
def backoff(model: str, streak: int, failed_at: float | None, error: str | None, now: float) -> Refuse | None:
    """(4) A model whose last `streak` workers all failed (the last at `failed_at`) waits 1, 2, 4... (at most
    60) seconds before the next try."""
    if streak < 2 or failed_at is None:
        return None
    wait = min(2 ** (streak - 2), BACKOFF_MAX_S) - (now - failed_at)
    if wait <= 0:
        return None
    return Refuse(WorkerUnavailable(
        f"Workers for '{model}' failed {streak} times in a row; the next try is in {wait:.0f} s. Last error: "
        f"{error}", headers={"Retry-After": str(math.ceil(wait))}))


def grouping(waited_since: float, now: float) -> bool:
    """(5) Whether a request still leaves the workers of models with requests waiting alone."""
    return now - waited_since < GROUPING_CAP_S


@dataclass(frozen=True)
class Elsewhere:
    """The hives a LAN copy could go to (none pins the request): their devices and the workers on them."""

    devices: Sequence[DeviceView]
    workers: Sequence[WorkerView]


@dataclass(frozen=True)
class Room:
    """What the load step sees: the devices of the hives holding the model, the workers on them, and who may
    not be evicted (`hard`: not ready, kept by min_replicas; `soon`: their model has requests waiting)."""

    model: str
    need: int
    devices: Sequence[DeviceView]
    workers: Sequence[WorkerView]
    hard: frozenset[str] = frozenset()
    soon: frozenset[str] = frozenset()
    evict: bool = True  # False for a replica: into free memory only
    pinned_device: str | None = None
    context: int | None = None  # the tokens per slot the worker is loaded with, when a request asked
    rank: Rank | None = None
    elsewhere: Elsewhere | None = None  # None: no LAN copy allowed
    prefer: str | None = None  # a hive holding the request's saved KV cache (kv_resume.py): first, if it has room


def load(room: Room) -> Load | CopyThenLoad | Wait | Refuse:
    """(4) Where a worker of the model goes, whom to evict for it, or a copy to another hive, or wait."""
    devices = _pinned(room)
    if isinstance(devices, Refuse):
        return devices
    if (there := _there(room, devices)) is not None:
        return there
    decision: Placement | None = None
    try:
        decision = _place(room.need, devices, room.workers, room.hard | room.soon, room.rank)
    except ModelTooLarge as exc:
        if room.elsewhere is None:
            return Refuse(too_large(room.model, exc, room.context))
    if decision is not None and decision.device is not None and (room.evict or not decision.evict):
        return Load(decision.device.hive, decision.device.device, tuple(decision.evict))
    if room.elsewhere is None:
        return Wait("waiting for memory to free")
    try:
        choice = copy_placement.choose(room.need, devices, room.elsewhere.devices,
                                       [*room.workers, *room.elsewhere.workers], room.hard, room.soon,
                                       replica=not room.evict)
    except ModelTooLarge as exc:  # no hive at all could ever hold it
        return Refuse(too_large(room.model, exc))
    if choice.target is not None and choice.device is not None:
        return CopyThenLoad(choice.target, choice.device, choice.reason)
    return Wait(choice.reason)


def _there(room: Room, devices: list[DeviceView]) -> Load | None:
    """A load on the preferred hive (`room.prefer`), when one of its devices has room without evicting."""
    if room.prefer is None:
        return None
    with contextlib.suppress(ModelTooLarge):
        decision = _place(room.need, [d for d in devices if d.hive == room.prefer], room.workers,
                          room.hard | room.soon, room.rank)
        if decision.device is not None and not decision.evict:
            return Load(decision.device.hive, decision.device.device)
    return None


def _pinned(room: Room) -> list[DeviceView] | Refuse:
    """The devices a worker of the model may go to: the one its settings pin it to, if any."""
    if room.pinned_device is None:
        return list(room.devices)
    pin = room.pinned_device.lower()
    devices = [d for d in room.devices if d.device in (pin, f"{pin}+cpu")]  # too small: the rest in RAM
    if devices:
        return devices
    return Refuse(WorkerUnavailable(
        f"'{room.model}' is pinned to device '{room.pinned_device}' (its settings in models.toml), which no "
        f"hive it may use has working; devices: {', '.join(f'{d.hive}:{d.device}' for d in room.devices)}"))


def _place(need: int, devices: list[DeviceView], workers: Sequence[WorkerView], protect: frozenset[str],
           rank: Rank | None) -> Placement:
    """placement.place, over the devices the user policy allows: the first of them in its order that has room
    now, else the built-in choice among them (with evictions); all of them when it allows none."""
    allowed = rank(devices) if rank is not None else []
    if not allowed:
        return place(need, devices, workers, protect)
    for device in allowed:
        with contextlib.suppress(ModelTooLarge):
            decision = place(need, [device], workers, protect)
            if decision.device is not None and not decision.evict:
                return decision
    return place(need, allowed, workers, protect)


def too_large(name: str, exc: ModelTooLarge, context: int | None = None) -> ModelTooLargeError:
    """The refusal of a model no device can hold, with the numbers."""
    if context is not None:  # loaded for a request longer than the model's workers' context
        return ModelTooLargeError(
            f"a worker of '{name}' with at least {context} tokens per slot needs {exc.need / 2**20:.0f} MiB, but the "
            f"largest device has {exc.largest / 2**20:.0f} MiB: free memory there (RBEE_MEMORY_BUDGET bounds a CPU "
            "hive), or give it fewer slots (RBEE_WORKER_SLOTS, or `slots` in models.toml)", param="messages",
            code="context_length_exceeded")
    return ModelTooLargeError(f"'{name}' cannot be loaded anywhere: it {exc}. Use a smaller quantization, or "
                              "fewer slots or less context per slot.", param="model")
