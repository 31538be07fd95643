"""The queen's side of KV caches kept across unloads (the hive's side: rbee/hive/slot_cache.py).

    save_then_stop   unload a worker, asking its hive to save the slots of its most recent conversations first
                     (the hive bounds the saving by RBEE_SLOT_SAVE_TIMEOUT_MS); any failure: a plain stop
    restore          before a conversation's request runs on a new worker: its saved slot into an idle slot;
                     False on any failure (logged), never raising: a lost cache only costs a prefill
    SlotRecord       which hive holds which saved keys for which model, from the saves' answers and the
                     hives' listings (`refresh`), so the request path knows where a restore can succeed; the
                     one owner of "saved where" (the affinity table forgets a worker once it is gone); and
                     the counts /metrics shows (saves, restores by result, saved bytes per hive)

Which slots are recent (the affinity table) and when to restore (the request path) are the callers' business.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from rbee.contracts.slots import KEY_PATTERN, MAX_SAVES, MAX_SLOT, SavedSlot, SlotSave
from rbee.contracts.workers import WorkerMode
from rbee.hive.slot_cache import SlotRefused
from rbee.queen.hive_errors import HIVE_ERRORS
from rbee.queen.hive_seam import AnyWorker, HiveSeam

log = logging.getLogger(__name__)

RecentSlots = Callable[[str], list[tuple[int, str]]]  # worker id -> (slot, key), most recent first
_KEY = re.compile(KEY_PATTERN)


def no_recent_slots(worker_id: str) -> list[tuple[int, str]]:
    """The default: nothing is saved on unload."""
    return []


class SlotRecord:
    """(hive, model) -> key -> what was saved; only a hint: a restore the hive cannot do answers False."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], dict[str, SavedSlot]] = {}
        self._index: dict[str, dict[int, str]] | None = None  # model -> key as a number -> key (built on use)
        self.saves = 0  # slots saved by this queen's unloads
        self.restores = {"restored": 0, "failed": 0}  # restores tried on the request path, by result

    def note(self, hive: str, saved: Iterable[SavedSlot]) -> None:
        for s in saved:
            self._held.setdefault((hive, s.model), {})[s.key] = s
        self._index = None

    def forget(self, hive: str, model: str, key: str) -> None:
        self._held.get((hive, model), {}).pop(key, None)
        self._index = None

    def keys(self, model: str) -> dict[int, str]:
        """The keys saved for `model` on any hive, by their value as a number (an affinity chain element, which
        `Affinity.recent` writes as 16 hex digits: other keys are never a chain's)."""
        if self._index is None:
            self._index = {}
            for (_, m), held in self._held.items():
                self._index.setdefault(m, {}).update((int(k, 16), k) for k in held if len(k) == 16)
        return self._index.get(model, {})

    def bytes_per_hive(self) -> dict[str, int]:
        """The bytes of saved slots each hive holds, as far as the queen knows."""
        found: dict[str, int] = {}
        for (hive, _), held in self._held.items():
            found[hive] = found.get(hive, 0) + sum(s.bytes for s in held.values())
        return found

    def holds(self, hive: str, model: str, key: str) -> bool:
        return key in self._held.get((hive, model), {})

    def holders(self, model: str, key: str) -> list[str]:
        """The hives holding `key` for `model`, the most recently used first."""
        found = [(held[key].last_used_at, hive) for (hive, m), held in self._held.items() if m == model and key in held]
        return [hive for _, hive in sorted(found, reverse=True)]

    async def refresh(self, hive: HiveSeam) -> bool:
        """Take the hive's own listing as the truth for it; False (logged) when it cannot be asked."""
        try:
            listing = await hive.slot_cache()
        except (*HIVE_ERRORS, ValidationError) as exc:
            log.warning("could not list the saved slots of hive %s: %s", hive.alias, exc)
            return False
        for held in [k for k in self._held if k[0] == hive.alias]:
            del self._held[held]
        self.note(hive.alias, listing.saved)
        log.info("hive %s holds %d saved slot(s)", hive.alias, len(listing.saved))
        return True


def _asks(worker: AnyWorker, slots: list[tuple[int, str]]) -> list[SlotSave]:
    asks, seen = [], set()
    for slot, key in slots:
        if 0 <= slot <= min(MAX_SLOT, worker.spec.slots - 1) and _KEY.fullmatch(key) and slot not in seen:
            seen.add(slot)
            asks.append(SlotSave(slot=slot, key=key))
        else:
            log.debug("not saving slot %r of %s: not a slot of it, or not a key (%r)", slot, worker.id, key[:80])
    return asks[:MAX_SAVES]


async def save_then_stop(hive: HiveSeam, worker: AnyWorker, slots: list[tuple[int, str]],
                         record: SlotRecord | None = None) -> list[SavedSlot]:
    """Stop `worker`, saving `slots` (slot, key; most recent first) first when it is a text worker; what was
    saved. A hive that cannot save (an older rbee, an error, a bad answer) gets a plain stop."""
    asks = _asks(worker, slots) if worker.spec.mode is WorkerMode.GENERATE else []
    if not asks:
        await hive.supervisor.stop(worker.id)
        return []
    try:
        stopped = await hive.save_and_stop(worker.id, asks)
    except (*HIVE_ERRORS, ValidationError) as exc:
        log.warning("could not save the slots of %s on %s (%s): stopping it without", worker.id, hive.alias, exc)
        await hive.supervisor.stop(worker.id)
        return []
    for why in stopped.skipped:
        log.info("%s on %s: %s", worker.id, hive.alias, why)
    log.info("saved %d of %d slot(s) of %s on %s in %.2f s", len(stopped.saved), len(asks), worker.id, hive.alias,
             stopped.save_s)
    if record is not None:
        record.note(hive.alias, stopped.saved)
        record.saves += len(stopped.saved)
    return stopped.saved


async def restore(hive: HiveSeam, worker: AnyWorker, slot: int, key: str, record: SlotRecord | None = None,
                  within: float | None = None) -> bool:
    """Read the slot saved under `key` into `slot` of `worker` (idle, same model); whether it was restored
    (False too when it takes longer than `within` seconds)."""
    model = worker.spec.model.name
    if hive.supervisor.get(worker.id) is not worker:
        log.info("no restore of %s for %s: worker %s is gone from %s", key, model, worker.id, hive.alias)
        return False  # (so a 404 below means the key: the hive holds nothing under it for that model)
    try:
        got = await asyncio.wait_for(hive.restore_slot(worker.id, slot, key), within)
    except Exception as exc:  # never raising: a failed restore costs a prefill, never the request
        log.info("no restore of %s for %s into %s/%d: %s", key, model, worker.id, slot,
                 f"not done within {within:g} s" if isinstance(exc, TimeoutError) and within else exc)
        if record is not None and isinstance(exc, SlotRefused) and exc.status == 404:
            record.forget(hive.alias, model, key)  # the hive holds no such key (for that model)
        return False
    if not got.restored:  # the hive deleted the file that failed
        log.info("no restore of %s for %s into %s/%d: %s", key, model, worker.id, slot, got.reason)
        if record is not None:
            record.forget(hive.alias, model, key)
        return False
    log.info("restored %d tokens of %s for %s into %s/%d", got.tokens, key, model, worker.id, slot)
    return True
