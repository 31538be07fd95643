"""A conversation's saved KV cache back into the slot its next turn runs on (issue 20, "KV kept across unloads").

The unload side: the scheduler hands the executor the affinity table's `recent` (affinity.py), so an unload or
an eviction saves the slots of the worker's conversations (slot_restore.save_then_stop), filed under the
conversation's key (a chain element as 16 hex digits); the SlotRecord (slot_restore.py) learns which hive holds
which keys per model, and is the one owner of "saved where": the affinity table only forgets the worker.

The request side, for a request whose chain no free live slot holds (or holds less of):
  (1) `plan`: the longest prefix of its chain that is saved for its model, and the hives holding it
      (most recently used first); nothing when a live slot holds as much or more;
  (2) `prefer`: among the free workers, the least loaded one on the first of those hives that has one
      (never a busy one: a restore never makes a request wait); when the model has no ready worker and one
      must be loaded anyway, the load step prefers the first holding hive when it has room without evicting
      (decide.load, `Room.prefer`): no load is started for a restore;
  (3) `run`, while the request holds its lease (so no other request takes the slot): the saved slot into the
      lease's slot, at most RESTORE_WAIT_S; a failure or a timeout only costs the cache: the request is
      forwarded anyway, the reason logged, `rbee_slot_restores_total{result="failed"}` counted.
`list_saved` (each pass of the queen's slot-listings loop): a hive's own listing of its saved slots is taken
into the record when it (re)registers, and the embedded hive's once, so a restarted queen still knows what the
hives hold.
The lease already records the request's chain for its slot (leases.take), so later turns hit it normally.
(1) and (2) are pure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rbee.contracts.hives import HiveState
from rbee.queen import slot_restore
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.leases import Lease

log = logging.getLogger(__name__)

__all__ = ["RESTORE_WAIT_S", "Free", "Resume", "list_saved", "plan", "prefer", "run"]

RESTORE_WAIT_S = 5.0  # the most a request waits for its saved slot before it is forwarded without
LIST_WAIT_S = 10.0  # the most one hive's listing of its saved slots is waited for


@dataclass(frozen=True)
class Resume:
    """Restore `key` (`depth` elements of the request's chain) from one of `hives`."""

    key: str
    hives: tuple[str, ...]
    depth: int


@dataclass(frozen=True)
class Free:
    """A worker with a free slot that the request may use."""

    id: str
    hive: str
    in_flight: int
    slots: int


def plan(chain: Sequence[int], live: int, model: str, record: slot_restore.SlotRecord) -> Resume | None:
    """(1) The longest prefix of `chain` saved for `model` that is longer than `live` (the elements a free live
    slot holds), or None."""
    saved = record.keys(model)
    if not saved:
        return None
    for depth in range(len(chain), live, -1):
        key = saved.get(chain[depth - 1])
        if key is not None:
            hives = record.holders(model, key)
            if hives:
                return Resume(key, tuple(hives), depth)
    return None


def prefer(resume: Resume | None, free: Sequence[Free]) -> str | None:
    """(2) The worker to prefer for `resume`: the least loaded free one on the first holding hive that has one."""
    if resume is None:
        return None
    for hive in resume.hives:
        there = [w for w in free if w.hive == hive and w.in_flight < w.slots]
        if there:
            return min(there, key=lambda w: (w.in_flight / w.slots, w.id)).id
    return None


async def run(hives: Mapping[str, HiveSeam], lease: Lease, record: slot_restore.SlotRecord) -> bool | None:
    """(3) The lease's saved slot restored before its request is forwarded: whether it was (None: nothing to
    restore)."""
    if lease.restore is None or lease.slot is None:
        return None
    hive = hives.get(lease.worker.hive)
    restored = hive is not None and await slot_restore.restore(hive, lease.worker, lease.slot, lease.restore,
                                                                record, within=RESTORE_WAIT_S)
    record.restores["restored" if restored else "failed"] += 1
    lease.restore = None  # once: a retry elsewhere is a new lease
    return restored


async def list_saved(hives: Mapping[str, HiveSeam], record: slot_restore.SlotRecord, listed: dict[str, int]) -> None:
    """Each ready hive's listing of its saved slots into `record` when it (re)registered since the last look
    (`listed`: alias -> its registrations then; the embedded hive has none, so it is listed once); the hives
    side by side, each for at most LIST_WAIT_S (one that does not answer is asked again next time)."""
    due = {alias: (hive, getattr(hive, "registrations", 0)) for alias, hive in list(hives.items())
           if hive.state is HiveState.READY and listed.get(alias) != getattr(hive, "registrations", 0)}

    async def one(alias: str, hive: HiveSeam, registrations: int) -> None:
        try:
            if await asyncio.wait_for(record.refresh(hive), LIST_WAIT_S):
                listed[alias] = registrations
        except TimeoutError:
            log.warning("hive %s did not list its saved slots within %g s; asking again", alias, LIST_WAIT_S)

    await asyncio.gather(*(one(alias, hive, n) for alias, (hive, n) in due.items()))
