"""Between the queen and a hive: KV caches of workers' slots kept across unloads (rbee/hive/slot_cache.py).

    queen -> hive   POST /v1/hive/workers/{id}/stop             SaveAndStop -> Stopped   (save these slots, then stop)
    queen -> hive   POST /v1/hive/workers/{id}/slots/{n}/restore SlotRestore -> SlotRestored
    queen -> hive   GET  /v1/hive/slot-cache                    -> SlotCacheList

A key names a conversation (the queen's affinity key): lowercase hex, 8 to 64 characters, so that it can never
become a path. The hive files a saved slot under the model's identity and the key; a key saved for one model is
not found for another.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rbee.contracts.base import Contract
from rbee.contracts.bounds import Bytes, Name, Seconds, Text
from rbee.contracts.workers import WorkerInfo

KEY_PATTERN = r"^[0-9a-f]{8,64}$"
MAX_SLOT = 511  # settings.worker_slots() allows 512 slots
MAX_SAVES = 64  # slots one stop may save
MAX_SAVED = 65536  # saved slots one hive may list

SlotKey = Annotated[str, Field(pattern=KEY_PATTERN)]
SlotId = Annotated[int, Field(ge=0, le=MAX_SLOT)]


class SlotSave(Contract):
    slot: SlotId
    key: SlotKey


class SaveAndStop(Contract):
    """The slots to save (most recent first: the first ones are saved while time allows), then the stop."""

    save: list[SlotSave] = Field(default=[], max_length=MAX_SAVES)


class SavedSlot(Contract):
    model: Name  # the model's name in the hive's catalog
    key: SlotKey
    bytes: Bytes
    tokens: Bytes
    last_used_at: Seconds


class Stopped(Contract):
    worker: WorkerInfo
    saved: list[SavedSlot] = Field(default=[], max_length=MAX_SAVES)
    skipped: list[Text] = Field(default=[], max_length=MAX_SAVES)  # why a slot asked for was not saved
    save_s: Seconds = 0  # how long saving delayed the stop (at most RBEE_SLOT_SAVE_TIMEOUT_MS, plus a little)


class SlotRestore(Contract):
    key: SlotKey


class SlotRestored(Contract):
    restored: bool
    tokens: Bytes = 0
    reason: Text | None = None


class SlotCacheList(Contract):
    budget_bytes: Bytes
    used_bytes: Bytes
    saved: list[SavedSlot] = Field(default=[], max_length=MAX_SAVED)
