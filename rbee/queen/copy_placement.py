"""Whether a model waits for the hives that hold it, or is copied over the LAN to another hive that has room
(DESIGN.md decisions 5, 6 and 10), as a pure function.

The scheduler's load step asks it when placement on the hives that hold the file found no device it may use
now, for a request no pin ties to one hive (a pinned request waits for its hive, or is copied there: copies.py):

    (1) a holder has room now: load there (the normal load step; prefer machines that already hold the file);
    (2) a first load (`replica=False`) where a holder can make room by evicting idle workers, or will once the
        workers protected only because their own model has requests waiting are served (the grouping cap):
        wait for the holder and evict there, no copy (that is seconds; a copy is minutes and a second file);
    (3) a copy only when no holder can make room without killing requests in flight (its devices are held by
        busy workers, workers still starting or ones min_replicas keeps), or no holder could ever hold it (too
        small); or, for a replica (`replica=True`, every worker of the model saturated and max_replicas
        allowing another), when no holder has free memory for it: another hive that has room now, without
        evicting anything, gets the file and the worker: a GPU before the CPU, then the roomiest (a copy takes
        a while: the hive with the most room left is the least likely to be full when it ends), then the alias;
    (4) else wait, with a reason giving the numbers; or, when no hive at all could ever hold a worker of it,
        `ModelTooLarge` (the caller refuses the request with the numbers).

Another hive's need is estimated as the holder's (the file is not there to read its header): the hives differ
only by their settings for slots and context, which the queen sends alike to all of them.

Views in, decision out: no I/O, no clock, no logging (tests/queen/test_copy_placement.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rbee.queen.placement import CPU, DeviceView, ModelTooLarge, Placement, WorkerView, place

GiB = 2**30


@dataclass(frozen=True)
class CopyChoice:
    """`target`/`device`: copy the model onto that hive and start a worker on that device; None: no copy
    (`stay`: the holders' own placement goes ahead, now or when memory frees). `reason`: one line for the log."""

    target: str | None
    device: str | None
    reason: str
    stay: bool = False


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def _used(d: DeviceView, workers: Sequence[WorkerView]) -> int:
    on = {p.device for p in d.parts} or {d.device}
    return sum(memory for w in workers if w.hive == d.hive for device, memory in w.on().items() if device in on)


def _busy_line(hives: Iterable[str], devices: Sequence[DeviceView], workers: Sequence[WorkerView]) -> str:
    """'h1 has 0.10 GiB of 1.00 GiB free (2 requests in flight)' per holder."""
    lines = []
    for hive in dict.fromkeys(hives):
        own = [d for d in devices if d.hive == hive and not d.parts]
        total = sum(d.total for d in own)
        free = sum(max(d.total - _used(d, workers), 0) for d in own)
        busy = sum(w.in_flight for w in workers if w.hive == hive)
        lines.append(f"{hive} has {_gib(free)} of {_gib(total)} free ({busy} requests in flight)")
    return "; ".join(lines)


def _roomiest(need: int, others: Sequence[DeviceView], workers: Sequence[WorkerView],
              protect: frozenset[str]) -> DeviceView | None:
    """The other hives' best device with room now (no evictions): a GPU first, then the most room left."""
    best: tuple[bool, int, str, str] | None = None
    chosen = None
    for hive in sorted({d.hive for d in others}):
        try:
            decision: Placement = place(need, [d for d in others if d.hive == hive], workers, protect)
        except ModelTooLarge:
            continue
        d = decision.device
        if d is None or decision.evict:
            continue
        rank = (d.device == CPU, -(d.total - _used(d, workers) - need), hive, d.device)
        if best is None or rank < best:
            best, chosen = rank, d
    return chosen


def may_copy(pinned_hive: str | None, pinned_device: str | None) -> bool:
    """Whether placement may send a request's model to another hive: only when nothing pins it (a request's
    X-Rbee-Hive or the model's own hive waits for, or is copied to, that hive: copies.py `for_request`; a
    model pinned to a device stays with the hives that hold it)."""
    return pinned_hive is None and pinned_device is None


def choose(need: int, holders: Sequence[DeviceView], others: Sequence[DeviceView], workers: Sequence[WorkerView],
           protect: frozenset[str] = frozenset(), soon: frozenset[str] = frozenset(),
           replica: bool = False) -> CopyChoice:
    """Copy or wait (see the module's steps). `holders`: the devices of the hives that hold the file; `others`:
    those of the hives a copy could go to; `workers`: every worker on either; `protect`: workers never evicted
    (not ready, kept by min_replicas); `soon`: workers protected only for now (their model has requests waiting)."""
    workers = list(workers)
    holder_hives = [d.hive for d in holders]
    too_large: ModelTooLarge | None = None
    try:
        now = place(need, holders, workers, protect | soon)  # (1)
        if now.device is not None and not now.evict:
            return CopyChoice(None, None, f"{now.device.hive}:{now.device.device} has room now", stay=True)
        if not replica:  # (2)
            later = now if now.device is not None else place(need, holders, workers, protect)
            if later.device is not None:
                return CopyChoice(None, None, f"{later.device.hive} can make room by evicting idle workers "
                                              f"({', '.join(later.evict)}): waiting for it, no copy", stay=True)
        why = f"no hive holding it has room: {_busy_line(holder_hives, holders, workers)}"
    except ModelTooLarge as exc:
        too_large = exc
        why = f"no hive holding it can ever run it: it {exc}"
    target = _roomiest(need, others, workers, protect | soon)  # (3)
    if target is not None:
        left = target.total - _used(target, workers) - need
        return CopyChoice(target.hive, target.device, f"{why}; copying it to {target.hive}, whose {target.device} "
                                                      f"has room ({_gib(left)} left after the ~{_gib(need)} it needs)")
    if too_large is not None:  # (4)
        try:
            place(need, others, [])
        except ModelTooLarge as exc:
            raise (too_large if too_large.largest >= exc.largest else exc) from None  # its own wording
    elsewhere = f"; {_busy_line([d.hive for d in others], others, workers)}" if others else \
        "; no other hive can take a copy"
    return CopyChoice(None, None, f"{why}{elsewhere}: waiting for memory to free")
