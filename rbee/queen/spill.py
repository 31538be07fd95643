"""The views rbee/queen/copy_placement.py decides on, built from the queen's hives and workers (the scheduler's
load step calls `choose`; the copy itself is copies.py `for_placement`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rbee.contracts.workers import WorkerState
from rbee.queen import copy_placement
from rbee.queen.copies import Copies
from rbee.queen.device_views import device_views
from rbee.queen.hive_seam import AnyWorker, HiveSeam
from rbee.queen.placement import DeviceView, WorkerView

HOLDING = (WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING, WorkerState.UNREACHABLE)


def worker_views(holding: Sequence[AnyWorker]) -> list[WorkerView]:
    return [WorkerView(w.id, w.hive, w.device, w.memory, w.in_flight, w.last_used,
                       w.held() if "+" in w.device else None) for w in holding]


def choose(copies: Copies, name: str, need: int, holders: Sequence[DeviceView], holding: Sequence[AnyWorker],
           reachable: Sequence[HiveSeam], held_by: set[str], unmovable: Callable[[AnyWorker], bool],
           has_waiters: Callable[[AnyWorker], bool], replica: bool) -> copy_placement.CopyChoice:
    """copy_placement.choose over `holders` (the devices of the hives that hold `name`, aliases `held_by`) and
    the reachable hives a peer can copy it to. `unmovable`: never evicted (starting, min_replicas); `has_waiters`:
    protected for now only (its model has requests waiting, within the grouping cap)."""
    others = [h for h in reachable if h.alias not in held_by and copies.sources(name, h)]
    on_others = [w for h in others for w in h.supervisor.workers() if w.state in HOLDING]
    views = [v for h in others for v in device_views(h, on_others, need, 0)]
    everyone = [*holding, *on_others]
    hard = frozenset(w.id for w in everyone if unmovable(w))
    soon = frozenset(w.id for w in everyone if has_waiters(w)) - hard
    return copy_placement.choose(need, holders, views, worker_views(everyone), hard, soon, replica)
