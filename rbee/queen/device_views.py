"""The devices of a hive as placement sees them (rbee/queen/placement.py DeviceView), from its report and
the memory rbee's workers hold there."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from rbee.contracts.hives import DeviceInfo
from rbee.hive.estimate import OVERHEAD
from rbee.queen.placement import CPU, DeviceView, Part


class _Hive(Protocol):
    alias: str

    def devices(self) -> list[DeviceInfo]: ...

    def memory_total(self) -> int: ...


class _Worker(Protocol):
    hive: str

    def held(self) -> dict[str, int]: ...


def device_views(hive: _Hive, holding: Sequence[_Worker], need: int, extra: int,
                  pinned: str | None = None) -> list[DeviceView]:
    """The hive's working devices as placement sees them. A device's room is its total (the CPU's: what the
    hive may give workers), but never more than what its workers hold plus what it reports free now, so
    memory other programs took counts too. `extra`: a hive that needs less for the model (its own slots and
    context) gets the difference as room. A model larger than each of the hive's GPUs may spread over all
    of one backend's GPUs there (one view, "cuda0+cuda1"), as may one `pinned` to such a spread; each GPU
    after the first holds a runtime more."""
    views, rooms = [], {}
    ours: dict[str, int] = defaultdict(int)  # what rbee's workers hold on each device of this hive
    for w in holding:
        if w.hive == hive.alias:
            for device, memory in w.held().items():
                ours[device] += memory
    working = [d for d in hive.devices() if not d.failed]
    for d in working:
        total = hive.memory_total() if d.id == CPU else d.total_bytes
        if d.free_bytes is not None:
            total = min(total, ours[d.id] + d.free_bytes)
        rooms[d.id] = total
        views.append(DeviceView(hive.alias, d.id, total + extra, has_model=True))
    for group in _spreads([d for d in working if d.id != CPU], need - extra, pinned):
        parts = tuple(Part(d.id, rooms[d.id] + (extra if i == 0 else -OVERHEAD), d.total_bytes)
                      for i, d in enumerate(group))
        views.append(DeviceView(hive.alias, "+".join(d.id for d in group), sum(p.room for p in parts),
                                has_model=True, parts=parts))
    return views


def _spreads(gpus: list[DeviceInfo], need: int, pinned: str | None) -> list[list[DeviceInfo]]:
    """The GPU groups a worker may spread over: the one it is pinned to, if all there; else, when the model
    is larger than each GPU, all of one backend's GPUs."""
    if pinned is not None and "+" in pinned:
        by_id = {d.id: d for d in gpus}
        group = [by_id[part] for part in pinned.lower().split("+") if part in by_id]
        return [group] if len(group) == len(pinned.split("+")) else []
    if any(d.total_bytes >= need for d in gpus):
        return []
    groups = ([d for d in gpus if d.backend == backend] for backend in dict.fromkeys(d.backend for d in gpus))
    return [group for group in groups if len(group) > 1]
