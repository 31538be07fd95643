"""Where a new worker goes: placement by memory (DESIGN.md decision 6), as a pure function.

    (1) devices that could ever hold the model (total >= need); none -> `ModelTooLarge` with the numbers.
        A view may be a spread over several GPUs of one hive ("cuda0+cuda1"): it holds the model when each
        GPU has room for its share (shares in proportion to the GPUs' sizes, as llama.cpp's --tensor-split);
        a model larger than its GPU(s) may offload layers to RAM ("cuda0+cpu": planned shares per part)
    (2) devices with room now: GPUs alone, then GPUs with layers in RAM, then the CPU; then the best fit
        (least memory left over), preferring hives that already hold the file, then the least busy
    (3) else devices where evicting idle workers makes room: evict least-recently-used first, never
        a worker with requests in flight (or one the caller protects); the fewest evictions win
    (4) else nothing: the request waits until memory is really free

`place` runs these as small pure steps: `_fitting` (1) keeps the views that could ever hold the model,
and the shares of the spread ones (`_shares`: what each GPU would hold); `_totals` adds up, in one pass
over the workers, the memory held, the requests in flight and the idle (evictable) workers per
(hive, device); `_with_room` (2) ranks the views with room now; `_with_evictions` (3) asks `_victims`
which idle workers, least recently used first, would make room on each view, and keeps the view that
needs the fewest.

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
    share: int | None = None  # what a worker holds here when planned, not in proportion (GPU+CPU offload)


@dataclass(frozen=True)
class DeviceView:
    hive: str
    device: str
    total: int
    has_model: bool = False
    parts: tuple[Part, ...] = ()  # a model spread over several GPUs of one hive (or GPUs + RAM: "cuda0+cpu")

    @property
    def tier(self) -> int:
        """GPUs only first, then GPUs with RAM (layers offloaded), then the CPU alone."""
        return 2 if self.device == CPU else 1 if self.parts and self.parts[-1].device == CPU else 0


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
    def __init__(self, need: int, largest: int, spread: bool = False, offload: bool = False) -> None:
        where = ("a hive's GPUs and RAM together hold at most" if offload else
                 "a hive's GPUs together hold at most" if spread else "the largest device has")
        super().__init__(f"needs {need / 2**30:.2f} GiB but {where} {largest / 2**30:.2f} GiB")
        self.need = need
        self.largest = largest


Key = tuple[str, str]  # (hive, device)
Share = tuple[Key, int, int]  # a device a view uses: its key, its room, what a worker would hold there


def _shares(d: DeviceView, need: int) -> tuple[Share, ...]:
    """Each device a view uses: its key, its room, and what a worker of `need` bytes would hold there."""
    if not d.parts:
        return (((d.hive, d.device), d.total, need),)
    if d.parts[0].share is not None:
        return tuple(((d.hive, p.device), p.room, p.share or 0) for p in d.parts)
    held = memory_held(d.device, need, [p.size for p in d.parts])
    return tuple(((d.hive, p.device), p.room, held[p.device]) for p in d.parts)


@dataclass
class _Totals:
    """Per (hive, device): memory the workers hold, requests in flight, and the idle workers (and their memory)
    that may be evicted."""

    used: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    busy: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    idle: dict[Key, list[WorkerView]] = field(default_factory=lambda: defaultdict(list))
    idle_memory: dict[Key, int] = field(default_factory=lambda: defaultdict(int))


def place(need: int, devices: Iterable[DeviceView], workers: Iterable[WorkerView],
          protect: frozenset[str] = frozenset()) -> Placement:
    fitting, spreads = _fitting(need, list(devices))
    totals = _totals(workers, protect)
    chosen = _with_room(need, fitting, spreads, totals)
    if chosen is not None:
        return Placement(chosen)
    return _with_evictions(need, fitting, spreads, totals) or Placement(None)  # (4)


Spreads = dict[Key, tuple[Share, ...]]  # the shares of each spread view that fits


def _fitting(need: int, devices: list[DeviceView]) -> tuple[list[DeviceView], Spreads]:
    """(1) The views that could ever hold the model, and the shares of the spread ones; none -> `ModelTooLarge`.
    A single device needs no shares: the common case stays free of loops and tuples (the decision's time)."""
    fitting: list[DeviceView] = []
    spreads: Spreads = {}
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
        raise ModelTooLarge(need, largest.total if largest else 0, bool(largest and largest.parts),
                            bool(largest and largest.tier == 1))
    return fitting, spreads


def _totals(workers: Iterable[WorkerView], protect: frozenset[str]) -> _Totals:
    """One pass over the workers: per-device totals (this pass dominates the decision's time)."""
    t = _Totals()
    used, busy, idle, idle_memory = t.used, t.busy, t.idle, t.idle_memory
    for w in workers:
        is_idle = w.in_flight == 0 and w.id not in protect
        if w.held is None:  # the common case, kept free of loops
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
    return t


def _with_room(need: int, fitting: list[DeviceView], spreads: Spreads, t: _Totals) -> DeviceView | None:
    """(2) The view with room now: a GPU before the CPU, the least left over, the file at hand, the least busy."""
    best: tuple[int, int, bool, int] | None = None
    chosen: DeviceView | None = None
    used, busy = t.used, t.busy
    for d in fitting:
        key = (d.hive, d.device)
        if d.parts:
            spare = [room - used[k] - share for k, room, share in spreads[key]]
            left, load = (sum(spare), sum(busy[k] for k, _, _ in spreads[key])) if min(spare) >= 0 else (-1, 0)
        else:
            left, load = d.total - used[key] - need, busy[key]
        if left >= 0:
            tier = 2 if d.device == CPU else 1 if d.parts and d.parts[-1].device == CPU else 0  # d.tier, inlined
            if tier == 1:  # GPUs with RAM: the most on the GPUs (the fastest), not the best fit
                left = -sum(share for (_, device), _, share in spreads[key] if device != CPU)
            rank = (tier, left, not d.has_model, load)
            if best is None or rank < best:
                best, chosen = rank, d
    return chosen


def _with_evictions(need: int, fitting: list[DeviceView], spreads: Spreads, t: _Totals) -> Placement | None:
    """(3) The view where evicting idle workers makes room: the fewest evictions, GPUs before RAM, the file at
    hand, the best fit."""
    options: list[tuple[int, int, bool, int, DeviceView, list[str]]] = []
    for d in fitting:
        key = (d.hive, d.device)
        if not d.parts and d.total - t.used[key] + t.idle_memory[key] < need:
            continue  # even evicting every idle worker would not make room
        shares = spreads.get(key) or ((key, d.total, need),)
        if any(room - t.used[k] + t.idle_memory[k] < share for k, room, share in shares):
            continue  # even evicting every idle worker would not make room
        evict, free = _victims(d.hive, shares, t)
        if all(free[k] >= share for k, _, share in shares):
            options.append((len(evict), d.tier, not d.has_model, sum(free.values()) - need, d, evict))
    if not options:
        return None
    best = min(options, key=lambda o: o[:4])
    return Placement(best[4], best[5])


def _victims(hive: str, shares: tuple[Share, ...], t: _Totals) -> tuple[list[str], dict[Key, int]]:
    """Idle workers to evict, least recently used first, until each device has room for its share; a worker
    that holds nothing where room is missing is kept. Returns them and the room each device then has."""
    free = {k: room - t.used[k] for k, room, _ in shares}
    wanted = {k: share for k, _, share in shares}
    evict: list[str] = []
    for w in sorted({w.id: w for k in wanted for w in t.idle[k]}.values(), key=lambda w: w.last_used):
        short = {device for (_, device), share in wanted.items() if free[(hive, device)] < share}
        if not short:
            break
        if short.isdisjoint(w.on()):
            continue
        evict.append(w.id)
        for device, memory in w.on().items():
            if (hive, device) in free:
                free[(hive, device)] += memory
    return evict, free
