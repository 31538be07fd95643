"""Many workers on one hive: spawn, find, stop, and forget the dead."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

from rbee.contracts.workers import WorkerState
from rbee.hive.worker import WorkerProcess, WorkerSpec, reap_orphans

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, hive: str, log_dir: Path) -> None:
        self._hive = hive
        self._log_dir = log_dir
        self._workers: dict[str, WorkerProcess] = {}
        self._ids = itertools.count(1)

    async def reap_orphans(self) -> None:
        """Kill the workers a previous run of this hive left behind (it was killed, not stopped)."""
        if self._log_dir.is_dir():
            killed = await asyncio.to_thread(reap_orphans, self._log_dir)
            if killed:
                log.warning("killed %d worker(s) left by a previous run: pids %s", len(killed), killed)

    def workers(self) -> list[WorkerProcess]:
        return list(self._workers.values())

    def get(self, worker_id: str) -> WorkerProcess | None:
        return self._workers.get(worker_id)

    async def spawn(self, spec: WorkerSpec, memory: int = 0) -> WorkerProcess:
        """Start a worker and wait until it is ready (raises `WorkerStartError`)."""
        worker_id = f"{self._hive}-w{next(self._ids)}"
        worker = WorkerProcess(worker_id, self._hive, spec, self._log_dir / f"{worker_id}.log")
        worker.memory = memory
        self._workers[worker_id] = worker
        await worker.start()
        return worker

    async def stop(self, worker_id: str) -> WorkerProcess | None:
        worker = self._workers.pop(worker_id, None)
        if worker is not None:
            await worker.stop()
        return worker

    def keep(self, worker: WorkerProcess) -> None:
        """List a failed worker again after its process was stopped (a spread that ended: its reason stays)."""
        self._workers[worker.id] = worker

    def forget_dead(self, keep: int = 20) -> None:
        """Drop stopped workers and all but the last `keep` failed ones."""
        dead = [w for w in self._workers.values() if w.state in (WorkerState.STOPPED, WorkerState.ERROR)]
        for worker in dead[: max(0, len(dead) - keep)]:
            self._workers.pop(worker.id, None)

    async def stop_all(self) -> None:
        workers = list(self._workers.values())
        self._workers.clear()
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
