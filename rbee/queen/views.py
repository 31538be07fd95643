"""The views rbee/queen/decide.py decides on, built from the queen's hives and their workers: the ready workers a
request may use (in the user policy's order), the hives not waiting out a back-off, and the load step's Room."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rbee.contracts.hives import DeviceInfo, WorkerShape
from rbee.contracts.models import ModelEntry
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.queen import copies as copies_mod
from rbee.queen import copy_placement, decide
from rbee.queen import spill as spill_mod
from rbee.queen.device_views import device_views
from rbee.queen.executor import own_settings
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.loads import Loads
from rbee.queen.placement import DeviceView
from rbee.queen.policy import Candidate, Policy, PolicyRequest

AnyWorker = spill_mod.AnyWorker
Candidates = list[tuple[HiveSeam, ModelEntry]]


def device_of(hives: Mapping[str, HiveSeam], alias: str, device_id: str) -> DeviceInfo | None:
    hive = hives.get(alias)
    return next((d for d in hive.devices() if d.id == device_id), None) if hive else None


def allowed(policy: Policy, hives: Mapping[str, HiveSeam], loads: Loads, workers: list[AnyWorker],
            request: PolicyRequest | None) -> list[AnyWorker]:
    """`workers` as the user policy filters and orders them (unchanged without one)."""
    if not policy.active or not workers:
        return workers
    by_candidate = {}
    for w in workers:
        device = device_of(hives, w.hive, w.device)
        by_candidate[Candidate(w.hive, w.device, device.name if device else w.device,
                               device.total_bytes if device else 0, w.id, loads.peek(w).in_flight,
                               w.spec.slots)] = w
    return [by_candidate[c] for c in policy.rank(request, list(by_candidate))]


def not_backing_off(candidates: Candidates, mode: WorkerMode, now: float) -> Candidates:
    """The candidates not waiting out a back-off (decide.backoff); the back-off's refusal when all are."""
    usable, refused = [], None
    for hive, entry in candidates:
        history = sorted((w for w in hive.supervisor.workers() if w.spec.model.name == entry.name
                          and w.spec.mode is mode), key=lambda w: w.started_at, reverse=True)
        streak = list(itertools.takewhile(lambda w: w.state is WorkerState.ERROR, history))
        last = streak[0] if streak else None
        wait = decide.backoff(entry.name, len(streak), last.failed_at if last else None,
                              last.error if last else None, now)
        if wait is None:
            usable.append((hive, entry))
        else:
            refused = refused or wait
    if not usable:
        assert refused is not None
        raise refused.error
    return usable


def device_rank(policy: Policy, hives: Mapping[str, HiveSeam], request: PolicyRequest | None,
                left_out: Callable[[], None]) -> decide.Rank | None:
    """The user policy's order of the devices a worker may go to (None without a policy); `left_out()` when it
    allows none of them."""
    if not policy.active:
        return None

    def rank(devices: list[DeviceView]) -> list[DeviceView]:
        by_candidate = {}
        for d in devices:
            info = device_of(hives, d.hive, d.device)
            by_candidate[Candidate(d.hive, d.device, info.name if info else d.device, d.total)] = d
        chosen = [by_candidate[c] for c in policy.rank(request, list(by_candidate))]
        if not chosen:
            left_out()
        return chosen
    return rank


@dataclass(frozen=True)
class Load:
    """A load step's question: the hives that hold the model (not backing off), what a worker needs on each,
    the workers holding memory there."""

    loads: Loads
    usable: Candidates
    needs: dict[str, int]
    holding: list[AnyWorker]
    shape: WorkerShape | None


async def room(load: Load, evict: bool, grouping: bool, waiting: dict[str, int], kept: Callable[[AnyWorker], bool],
               rank: decide.Rank | None, copies: copies_mod.Copies | None, reachable: list[HiveSeam]) -> decide.Room:
    """decide.Room: the hives' devices, the workers there, whom not to evict, and where a LAN copy may go
    (`copies` given: the request is pinned nowhere)."""
    name = load.usable[0][1].name
    need = max(load.needs.values())
    pinned_device = own_settings(name).device
    devices = [view for hive, entry in load.usable
               for view in device_views(hive, load.holding, need, need - load.needs[hive.alias], pinned_device,
                                        _block_count(entry))]
    everyone = list(load.holding)
    others = None
    if copies is not None and copy_placement.may_copy(None, pinned_device):
        views, on_others = await spill_mod.elsewhere(copies, name, need, reachable, {h.alias for h, _ in load.usable})
        others = decide.Elsewhere(views, spill_mod.worker_views(on_others, load.loads))
        everyone += on_others
    hard = frozenset(w.id for w in everyone if w.state is not WorkerState.READY or kept(w))
    soon = frozenset(w.id for w in everyone if grouping and waiting.get(w.spec.model.name, 0) > 0) - hard
    return decide.Room(name, need, devices, spill_mod.worker_views(load.holding, load.loads), hard, soon, evict,
                       pinned_device, load.shape.at_least if load.shape else None, rank, others)


def _block_count(entry: ModelEntry) -> int | None:
    """The model's layer count from its header (None for one that may not offload layers to RAM)."""
    count = entry.header.get("block_count")
    allowed = entry.kind != "speech" and own_settings(entry.name).offload is not False
    return count if isinstance(count, int) and allowed else None
