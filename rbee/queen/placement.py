"""Where a new worker goes: placement by memory (DESIGN.md decision 6), as a pure function.

    (1) devices that could ever hold the model (total >= need); none -> `ModelTooLarge` with the numbers.
        A view may be a spread over several GPUs of one hive ("cuda0+cuda1"): it holds the model when each
        GPU has room for its share (shares in proportion to the GPUs' sizes, as llama.cpp's --tensor-split)
    (2) devices with room now: a GPU before the CPU, then the best fit (least memory left over),
        preferring hives that already hold the file, then the least busy
    (3) else devices where evicting idle workers makes room: evict least-recently-used first, never
        a worker with requests in flight (or one the caller protects); the fewest evictions win
    (4) else nothing: the request waits until memory is really free

Views in, decision out: no I/O, no clock, no logging, so it is fast (see benchmarks/scheduler.py)
and tested on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rbee.contracts.workers import memory_held

CPU = "cpu"  # the device id every hive has; the others are GPUs


@dataclass(frozen=True)
class Part:
    """One GPU of a spread ("cuda0+cuda1"): the room it gives workers, and its size (its share of layers)."""

    device: str
    room: int
    size: int


@dataclass(frozen=True)
class DeviceView:
    hive: str
    device: str
    total: int
    has_model: bool = False
    parts: tuple[Part, ...] = ()  # a model spread over several GPUs of one hive; empty for one device


@dataclass(frozen=True)
class WorkerView:
    id: str
    hive: str
    device: str
    memory: int
    in_flight: int
    last_used: float
    held: Mapping[str, int] | None = None  # memory per device when spread; None: all of it on `device`

    def on(self) -> Mapping[str, int]:
        return self.held or {self.device: self.memory}


@dataclass(frozen=True)
class Placement:
    device: DeviceView | None
    evict: list[str] = field(default_factory=list)


class ModelTooLarge(ValueError):
    def __init__(self, need: int, largest: int, spread: bool = False) -> None:
        where = "a hive's GPUs together hold at most" if spread else "the largest device has"
        super().__init__(f"needs {need / 2**30:.2f} GiB but {where} {largest / 2**30:.2f} GiB")
        self.need = need
        self.largest = largest


Key = tuple[str, str]  # (hive, device)


def _shares(d: DeviceView, need: int) -> tuple[tuple[Key, int, int], ...]:
    """Each device a view uses: its key, its room, and what a worker of `need` bytes would hold there."""
    if not d.parts:
        return (((d.hive, d.device), d.total, need),)
    held = memory_held(d.device, need, [p.size for p in d.parts])
    return tuple(((d.hive, p.device), p.room, held[p.device]) for p in d.parts)


def place(need: int, devices: Iterable[DeviceView], workers: Iterable[WorkerView],
          protect: frozenset[str] = frozenset()) -> Placement:
    devices = list(devices)
    fitting: list[DeviceView] = []  # (1)
    spreads: dict[Key, tuple[tuple[Key, int, int], ...]] = {}
    for d in devices:
        if not d.parts:
            if d.total >= need:
                fitting.append(d)
            continue
        shares = _shares(d, need)
        if all(room >= share for _, room, share in shares):
            fitting.append(d)
            spreads[(d.hive, d.device)] = shares
    if not fitting:
        largest = max(devices, key=lambda d: d.total, default=None)
        raise ModelTooLarge(need, largest.total if largest else 0, bool(largest and largest.parts))
    used: dict[Key, int] = defaultdict(int)
    busy: dict[Key, int] = defaultdict(int)
    idle: dict[Key, list[WorkerView]] = defaultdict(list)
    idle_memory: dict[Key, int] = defaultdict(int)
    for w in workers:  # one pass: per-device totals
        is_idle = w.in_flight == 0 and w.id not in protect
        if w.held is None:  # the common case, kept free of loops: this pass dominates the decision's time
            key = (w.hive, w.device)
            used[key] += w.memory
            busy[key] += w.in_flight
            if is_idle:
                idle[key].append(w)
                idle_memory[key] += w.memory
            continue
        for device, memory in w.held.items():
            key = (w.hive, device)
            used[key] += memory
            busy[key] += w.in_flight
            if is_idle:
                idle[key].append(w)
                idle_memory[key] += memory
    best: tuple[bool, int, bool, int] | None = None
    chosen: DeviceView | None = None
    for d in fitting:  # (2)
        key = (d.hive, d.device)
        if d.parts:
            spare = [room - used[k] - share for k, room, share in spreads[key]]
            left, load = (sum(spare), sum(busy[k] for k, _, _ in spreads[key])) if min(spare) >= 0 else (-1, 0)
        else:
            left, load = d.total - used[key] - need, busy[key]
        if left >= 0:
            rank = (d.device == CPU, left, not d.has_model, load)
            if best is None or rank < best:
                best, chosen = rank, d
    if chosen is not None:
        return Placement(chosen)
    options: list[tuple[int, bool, int, DeviceView, list[str]]] = []  # (3)
    for d in fitting:
        key = (d.hive, d.device)
        if not d.parts and d.total - used[key] + idle_memory[key] < need:
            continue  # even evicting every idle worker would not make room
        shares = spreads.get(key) or ((key, d.total, need),)
        if any(room - used[k] + idle_memory[k] < share for k, room, share in shares):
            continue
        free = {key: room - used[key] for key, room, _ in shares}
        wanted = {key: share for key, _, share in shares}
        evict: list[str] = []
        for w in sorted({w.id: w for key in wanted for w in idle[key]}.values(), key=lambda w: w.last_used):
            short = {device for (_, device), share in wanted.items() if free[(d.hive, device)] < share}
            if not short:
                break
            if short.isdisjoint(w.on()):
                continue  # it holds nothing where room is missing
            evict.append(w.id)
            for device, memory in w.on().items():
                if (d.hive, device) in free:
                    free[(d.hive, device)] += memory
        if all(free[key] >= share for key, share in wanted.items()):
            options.append((len(evict), not d.has_model, sum(free.values()) - need, d, evict))
    if options:
        best_option = min(options, key=lambda o: o[:3])
        return Placement(best_option[3], best_option[4])
    return Placement(None)  # (4)
