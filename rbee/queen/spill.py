"""The views rbee/queen/copy_placement.py decides on (through decide.py's load step), built from the queen's hives
and workers: the hives a LAN copy of a model could go to, and the workers on them (the copy itself is copies.py
`for_placement`)."""

from __future__ import annotations

from collections.abc import Sequence

from rbee.contracts.workers import WorkerState
from rbee.queen.copies import Copies
from rbee.queen.device_views import device_views
from rbee.queen.hive_seam import AnyWorker, HiveSeam
from rbee.queen.loads import Loads
from rbee.queen.placement import DeviceView, WorkerView

HOLDING = (WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING, WorkerState.UNREACHABLE)


def worker_views(holding: Sequence[AnyWorker], loads: Loads) -> list[WorkerView]:
    views = []
    for w in holding:
        load = loads.peek(w)
        views.append(WorkerView(w.id, w.hive, w.device, w.memory, load.in_flight, load.last_used,
                                w.held() if "+" in w.device else None))
    return views


async def elsewhere(copies: Copies, name: str, need: int, reachable: Sequence[HiveSeam], held_by: set[str]
                    ) -> tuple[list[DeviceView], list[AnyWorker]]:
    """The devices of the reachable hives that do not hold `name` (aliases `held_by`) but that a peer can copy it
    to, and the workers holding memory there."""
    others = [h for h in reachable if h.alias not in held_by and await copies.sources(name, h)]
    on_others = [w for h in others for w in h.supervisor.workers() if w.state in HOLDING]
    return [v for h in others for v in device_views(h, on_others, need, 0)], on_others
