"""The devices of a hive as placement sees them (rbee/queen/placement.py DeviceView), from its report and
the memory rbee's workers hold there."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from rbee.contracts.hives import DeviceInfo
from rbee.contracts.workers import memory_held
from rbee.hive.estimate import OVERHEAD, offload
from rbee.queen.placement import CPU, DeviceView, Part


class _Hive(Protocol):
    alias: str

    def devices(self) -> list[DeviceInfo]: ...

    def memory_total(self) -> int: ...

    def lent(self) -> dict[str, int]: ...


class _Worker(Protocol):
    hive: str

    def held(self) -> dict[str, int]: ...


def device_views(hive: _Hive, holding: Sequence[_Worker], need: int, extra: int,
                  pinned: str | None = None, block_count: int | None = None) -> list[DeviceView]:
    """The hive's working devices as placement sees them. A device's room is its total (the CPU's: what the
    hive may give workers), but never more than what its workers hold plus what it reports free now, so
    memory other programs took counts too. `extra`: a hive that needs less for the model (its own slots and
    context) gets the difference as room. A model larger than each of the hive's GPUs may spread over all
    of one backend's GPUs there (one view, "cuda0+cuda1"), as may one `pinned` to such a spread; each GPU
    after the first holds a runtime more. A model larger than a GPU's (or such a group's) room, whose header
    names its `block_count`, may also run there with the layers that do not fit in RAM ("cuda0+cpu")."""
    working = [d for d in hive.devices() if not d.failed]
    rooms = _rooms(hive, working, _ours(hive.alias, holding))
    views = [DeviceView(hive.alias, d.id, rooms[d.id] + extra, has_model=True) for d in working]
    for group in _spreads([d for d in working if d.id != CPU], need - extra, pinned):
        views.append(_spread_view(hive.alias, group, rooms, extra))
    if block_count and CPU in rooms:
        views += _offload_views(hive.alias, [d for d in working if d.id != CPU], rooms, need - extra, block_count)
    return views


def _offload_views(alias: str, gpus: list[DeviceInfo], rooms: dict[str, int], need: int,
                   block_count: int) -> list[DeviceView]:
    """A view "GPUS+cpu" for each GPU, and each group of one backend's GPUs, whose room is too small for a
    worker of `need` bytes (this hive's own), with the shares estimate.offload plans on each part."""
    groups = [[d] for d in gpus]
    groups += [g for g in ([d for d in gpus if d.backend == b] for b in dict.fromkeys(d.backend for d in gpus))
               if len(g) > 1]
    views = []
    for group in groups:
        runtimes = OVERHEAD * (len(group) - 1)  # each GPU after the first holds a runtime more
        plan = offload(need + runtimes, block_count, sum(rooms[d.id] for d in group))
        if plan is None:
            continue
        name = "+".join(d.id for d in group)
        on_gpus = memory_held(name, plan.gpu, [d.total_bytes for d in group])
        parts = (*(Part(d.id, rooms[d.id], d.total_bytes, on_gpus[d.id]) for d in group),
                 Part(CPU, rooms[CPU], 0, plan.cpu))
        views.append(DeviceView(alias, f"{name}+{CPU}", sum(p.room for p in parts), has_model=True, parts=parts))
    return views


def _ours(alias: str, holding: Sequence[_Worker]) -> dict[str, int]:
    """What rbee's workers hold on each device of the hive `alias`."""
    ours: dict[str, int] = defaultdict(int)
    for w in holding:
        if w.hive == alias:
            for device, memory in w.held().items():
                ours[device] += memory
    return ours


def _rooms(hive: _Hive, working: list[DeviceInfo], ours: dict[str, int]) -> dict[str, int]:
    """Each working device's room: its total (the CPU's: the hive's budget), at most what rbee's workers
    hold there plus what it reports free; what its rpc-servers hold for spreads across hives is not room."""
    rooms = {}
    lent = hive.lent()
    for d in working:
        total = (hive.memory_total() if d.id == CPU else d.total_bytes) - lent.get(d.id, 0)
        if d.free_bytes is not None:
            total = min(total, ours[d.id] + d.free_bytes)
        rooms[d.id] = total
    return rooms


def _spread_view(alias: str, group: list[DeviceInfo], rooms: dict[str, int], extra: int) -> DeviceView:
    """One view over a group of GPUs: the first gets `extra`, each one after it holds a runtime more."""
    parts = tuple(Part(d.id, rooms[d.id] + (extra if i == 0 else -OVERHEAD), d.total_bytes)
                  for i, d in enumerate(group))
    return DeviceView(alias, "+".join(d.id for d in group), sum(p.room for p in parts), has_model=True,
                      parts=parts)


def _spreads(gpus: list[DeviceInfo], need: int, pinned: str | None) -> list[list[DeviceInfo]]:
    """The GPU groups a worker may spread over: the one it is pinned to, if all there; else, when the model
    is larger than each GPU, all of one backend's GPUs."""
    if pinned is not None and "+" in pinned:
        return _pinned_group(gpus, pinned)
    if any(d.total_bytes >= need for d in gpus):
        return []
    groups = ([d for d in gpus if d.backend == backend] for backend in dict.fromkeys(d.backend for d in gpus))
    return [group for group in groups if len(group) > 1]


def _pinned_group(gpus: list[DeviceInfo], pinned: str) -> list[list[DeviceInfo]]:
    """The group a spread pin ("cuda0+cuda1") names, when each of its GPUs is there; else none."""
    by_id = {d.id: d for d in gpus}
    group = [by_id[part] for part in pinned.lower().split("+") if part in by_id]
    return [group] if len(group) == len(pinned.split("+")) else []
