"""A hive's saved KV caches: slots of unloaded workers, kept on disk so a conversation resumes without a prefill.

Every text worker starts with `--slot-save-path` at this folder (700). Saving asks llama-server to write one
slot (`POST /slots/{n}?action=save`), restoring asks it to read one back into an idle slot of a new worker of the
same model (`?action=restore`). What this module owns:

- names: `{model id}-{key}.bin`, the model id from its file's sha256 (or, for a file added by hand, from its
  name, path and size), the key a validated hex string (rbee/contracts/slots.py): a key never becomes a path;
- the index (`index.json`, 600): model, key, bytes, tokens, sha256 and last use of every file;
- the budget (RBEE_SLOT_CACHE_MIB): after each save the least recently used files go until the rest fits;
- the time bound (RBEE_SLOT_SAVE_TIMEOUT_MS, for all the slots of one stop): a save still running then is
  abandoned, its partial file deleted, and the worker is stopped anyway, so saving never delays freeing memory
  for a waiting model by more than the bound;
- checks on restore: a file that is gone, changed since it was saved (its sha256), or that llama-server
  refuses (another model, a context too small, garbage) answers `restored: false` and is deleted.

Mechanism only: which slots to save and where to restore is the queen's (rbee/queen/slot_restore.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rbee.common import paths, settings
from rbee.common.upstream import Upstream
from rbee.contracts.models import ModelEntry
from rbee.contracts.slots import SavedSlot, SlotCacheList, SlotRestored, SlotSave, Stopped
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive.downloads import sha256_of
from rbee.hive.supervisor import Supervisor
from rbee.hive.worker import WorkerProcess

log = logging.getLogger(__name__)

INDEX = "index.json"
RESTORE_TIMEOUT_S = 30.0  # a restore waits for the slot to be idle; the queen bounds its own wait too
CONNECT_S = 5.0  # to a worker on this machine
MAX_ANSWER_BYTES = 64 * 1024  # llama-server's answer to a save or restore is a few fields
_SAVABLE = (WorkerState.READY, WorkerState.DRAINING)  # draining: the queen took it out of rotation to evict it


class SlotRefused(ValueError):
    """The caller asked for something that cannot be: no such worker, no such slot, a worker that is not ready.
    `status` is the HTTP status the hive answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Entry:
    model: str
    key: str
    bytes: int
    tokens: int
    last_used_at: float
    sha256: str = ""

    def public(self) -> SavedSlot:
        return SavedSlot(model=self.model, key=self.key, bytes=self.bytes, tokens=self.tokens,
                         last_used_at=self.last_used_at)


def model_id(model: ModelEntry) -> str:
    """A model's identity for its saved slots: its file's sha256 (first 32 hex digits), else one from its name,
    path and size (a file added by hand, never hashed)."""
    digest = model.sha256.get(model.path) or hashlib.sha256(
        f"{model.name}\0{model.path}\0{model.size_bytes}".encode()).hexdigest()
    return digest[:32].lower()


def file_name(model: ModelEntry, key: str) -> str:
    return f"{model_id(model)}-{key}.bin"


class SlotCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._index: dict[str, _Entry] | None = None
        self._saving: set[str] = set()  # partial files of saves in progress (the sweep leaves them)
        self._lock = asyncio.Lock()

    def path(self) -> Path:
        """The folder workers write to (made 700 here)."""
        return paths.private_dir(self.folder)

    # -- the index --------------------------------------------------------------------------------------------
    async def _entries(self) -> dict[str, _Entry]:
        if self._index is None:
            self._index = await asyncio.to_thread(self._read_index)
        return self._index

    def _read_index(self) -> dict[str, _Entry]:
        try:
            raw = json.loads((self.path() / INDEX).read_text())  # (made here, in a thread)
            entries = {name: _Entry(**fields) for name, fields in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.warning("the slot cache's index is unreadable (%s): its files are deleted", exc)
            entries = {}
        for orphan in self.folder.glob("*.bin"):  # files the index does not know of (a crash mid-save)
            if orphan.name not in entries:
                orphan.unlink(missing_ok=True)
        return entries

    async def _write_index(self) -> None:
        text = json.dumps({name: asdict(e) for name, e in (await self._entries()).items()})

        def write() -> None:
            temp = self.folder / f"{INDEX}.tmp"
            with paths.open_private(temp, "wb") as f:
                f.write(text.encode())
            temp.replace(self.folder / INDEX)

        await asyncio.to_thread(write)

    async def listing(self) -> SlotCacheList:
        entries = await self._entries()
        saved = sorted((e.public() for e in entries.values()), key=lambda s: -s.last_used_at)
        used = sum(e.bytes for e in entries.values())
        try:
            budget = settings.slot_cache_bytes()
        except settings.SettingsError:
            budget = 0  # nothing is saved while the setting is wrong (each stop says why)
        return SlotCacheList(budget_bytes=budget, used_bytes=used, saved=saved)

    async def _drop(self, name: str) -> None:
        (await self._entries()).pop(name, None)
        await asyncio.to_thread((self.folder / name).unlink, True)

    async def _fit(self, budget: int) -> None:
        """Delete the least recently used files until the rest fits in `budget`."""
        entries = await self._entries()
        for name, entry in sorted(entries.items(), key=lambda kv: kv[1].last_used_at):
            if sum(e.bytes for e in entries.values()) <= budget:
                break
            log.info("slot cache over its budget: deleting %s's saved slot %s (%d bytes)", entry.model,
                     entry.key, entry.bytes)
            await self._drop(name)

    # -- saving -----------------------------------------------------------------------------------------------
    async def save_and_stop(self, supervisor: Supervisor, worker_id: str, slots: list[SlotSave]) -> Stopped:
        """Save `slots` of the worker (in order, while the time bound allows), then stop it whatever happened."""
        worker = supervisor.get(worker_id)
        if worker is None:
            raise SlotRefused(f"There is no worker '{worker_id}' on this hive.", 404)
        saved: list[SavedSlot] = []
        skipped: list[str] = []
        started = time.monotonic()
        if slots and worker.state in _SAVABLE and worker.spec.slot_save_path is not None:
            worker.begin_drain()
            saved, skipped = await self._save_all(worker, slots)
        elif slots:
            skipped = [f"worker {worker_id} is {worker.state} without a slot cache: nothing saved"]
        save_s = time.monotonic() - started
        await supervisor.stop(worker_id)
        await asyncio.to_thread(self._sweep)
        if saved:
            await self._seal(worker, saved)
        return Stopped(worker=worker.info(), saved=saved, skipped=skipped, save_s=save_s)

    async def _save_all(self, worker: WorkerProcess, slots: list[SlotSave]) -> tuple[list[SavedSlot], list[str]]:
        try:
            budget, bound = settings.slot_cache_bytes(), settings.slot_save_timeout_s()
        except settings.SettingsError as exc:  # the worker is stopped all the same
            return [], [f"nothing saved: {exc}"]
        if budget == 0:
            return [], ["saving is off (RBEE_SLOT_CACHE_MIB=0)"]
        saved: list[SavedSlot] = []
        skipped: list[str] = []
        deadline = time.monotonic() + bound
        for ask in slots:
            if ask.slot >= worker.spec.slots:
                skipped.append(f"slot {ask.slot}: the worker has {worker.spec.slots} slots")
                continue
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                saved.append(await asyncio.wait_for(self._save_one(worker, ask), left))
            except TimeoutError:
                skipped.append(f"slot {ask.slot}: not saved within {bound:g} s (RBEE_SLOT_SAVE_TIMEOUT_MS)")
            except (ValueError, OSError) as exc:
                skipped.append(f"slot {ask.slot}: {str(exc)[:300] or type(exc).__name__}")
        for reason in skipped:
            log.warning("worker %s (%s): %s", worker.id, worker.spec.model.name, reason)
        return saved, skipped

    async def _save_one(self, worker: WorkerProcess, ask: SlotSave) -> SavedSlot:
        name = file_name(worker.spec.model, ask.key)
        partial = f"{name}.{secrets.token_hex(4)}.part"  # two workers of one model may save one key at once
        self._saving.add(partial)
        try:
            status, answer = await _slot_action(worker, ask.slot, "save", partial)
            if status != 200:
                raise ValueError(f"llama-server refused to save slot {ask.slot}: {_engine_message(status, answer)}")
            tokens = int(answer.get("n_saved", 0))
            if tokens == 0:
                raise ValueError(f"slot {ask.slot} holds no tokens")
            size = await asyncio.to_thread(_publish, self.folder / partial, self.folder / name)
        finally:
            self._saving.discard(partial)
            await asyncio.to_thread((self.folder / partial).unlink, True)
        entry = _Entry(worker.spec.model.name, ask.key, size, tokens, time.time())
        async with self._lock:
            (await self._entries())[name] = entry
        return entry.public()

    async def _seal(self, worker: WorkerProcess, saved: list[SavedSlot]) -> None:
        """After the stop (memory is free by then): hash what was saved, then fit the budget and write the index."""
        async with self._lock:
            entries = await self._entries()
            for s in saved:
                entry = entries.get(file_name(worker.spec.model, s.key))
                if entry is not None:
                    entry.sha256 = await asyncio.to_thread(sha256_of, self.folder / file_name(worker.spec.model, s.key))
            await self._fit(settings.slot_cache_bytes())
            await self._write_index()
        kept = {(e.model, e.key) for e in entries.values()}
        saved[:] = [s for s in saved if (s.model, s.key) in kept]

    def _sweep(self) -> None:
        """Delete partial files no save is writing (one abandoned before llama-server opened it: the worker is
        stopped now, so nothing writes there any more)."""
        for partial in self.folder.glob("*.part"):
            if partial.name not in self._saving:
                partial.unlink(missing_ok=True)

    # -- restoring --------------------------------------------------------------------------------------------
    async def restore(self, worker: WorkerProcess | None, slot: int, key: str) -> SlotRestored:
        """Read the slot saved under `key` for this worker's model into its idle `slot`."""
        if worker is None:
            raise SlotRefused("There is no such worker on this hive.", 404)
        if worker.spec.slot_save_path is None or worker.spec.mode is not WorkerMode.GENERATE:
            raise SlotRefused(f"worker {worker.id} keeps no slot cache (only text workers do)", 409)
        if worker.state is not WorkerState.READY:
            raise SlotRefused(f"worker {worker.id} is {worker.state}, not ready", 409)
        if slot >= worker.spec.slots:
            raise SlotRefused(f"worker {worker.id} has {worker.spec.slots} slots: there is no slot {slot}")
        name = file_name(worker.spec.model, key)
        async with self._lock:
            entry = (await self._entries()).get(name)
            if entry is None:
                raise SlotRefused(f"nothing is saved under that key for '{worker.spec.model.name}'", 404)
            problem = await asyncio.to_thread(self._check, name, entry)
            if problem:
                return await self._refused(name, problem)
        try:
            async with asyncio.timeout(RESTORE_TIMEOUT_S):
                status, answer = await _slot_action(worker, slot, "restore", name)
        except OSError as exc:  # the upstream client's errors, TimeoutError among them
            return SlotRestored(restored=False, reason=f"the worker did not answer ({type(exc).__name__})")
        if status != 200:
            async with self._lock:
                return await self._refused(name, f"the worker refused the file: {_engine_message(status, answer)}")
        async with self._lock:
            entry.last_used_at = time.time()
            await self._write_index()
        return SlotRestored(restored=True, tokens=int(answer.get("n_restored", 0)))

    def _check(self, name: str, entry: _Entry) -> str | None:
        path = self.folder / name
        if not path.is_file():
            return "its file is gone"
        if path.stat().st_size != entry.bytes or (entry.sha256 and sha256_of(path) != entry.sha256):
            return "its file changed since it was saved"
        return None

    async def _refused(self, name: str, reason: str) -> SlotRestored:
        log.warning("saved slot %s not restored (%s): deleted", name, reason)
        await self._drop(name)
        await self._write_index()
        return SlotRestored(restored=False, reason=reason)


def _publish(partial: Path, final: Path) -> int:
    """The finished file under its name, 600; its size."""
    os.chmod(partial, 0o600)
    partial.replace(final)
    return final.stat().st_size


async def _slot_action(worker: WorkerProcess, slot: int, action: str, filename: str) -> tuple[int, dict[str, Any]]:
    """`POST /slots/{slot}?action=...` to the worker, with the hops' own client (rbee.common.upstream: a queen
    that saves or restores slots does without httpx, ~4 MB): its status and JSON answer ({} when it is not an
    object). A plain-HTTP worker gets no TLS context (building one loads the CA bundle, ~25 ms)."""
    tls = worker.spec.tls.client_context() if worker.spec.tls else None
    headers = {"Authorization": f"Bearer {worker.api_key}", "Content-Type": "application/json"}
    client = Upstream(connect_s=CONNECT_S)
    try:
        got = await client.request("POST", f"{worker.url}/slots/{slot}?action={action}",
                                   json.dumps({"filename": filename}).encode(), headers, tls=tls)
        try:
            body = await got.read(MAX_ANSWER_BYTES)
        finally:
            got.close()
    finally:
        await client.close()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return got.status, answer if isinstance(answer, dict) else {}


def _engine_message(status: int, answer: dict[str, Any]) -> str:
    error = answer.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return str(message)[:300] if message is not None else f"HTTP {status}"
