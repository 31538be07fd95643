"""Everything a running queen holds, built once at start-up."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from rbee.common import paths, settings
from rbee.common.jobs import JobRunner
from rbee.common.version import current as current_version
from rbee.contracts.status import QueenHealth
from rbee.hive.service import Hive
from rbee.queen.db import QueenDB
from rbee.queen.proxy import Forwarder
from rbee.queen.remote_hive import AnyHive, RemoteHive
from rbee.queen.scheduler import Scheduler


def queen_state(request: Request) -> QueenState:
    """The state of the queen serving `request`."""
    state: QueenState = request.app.state.queen
    return state


@dataclass
class QueenState:
    hives: dict[str, AnyHive]  # the embedded local hive (unless RBEE_LOCAL_HIVE=0) and the registered remote ones
    scheduler: Scheduler
    db: QueenDB
    forwarder: Forwarder = field(default_factory=Forwarder)
    jobs: JobRunner = field(default_factory=JobRunner)
    started_at: float = field(default_factory=time.time)
    listen_host: str | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(cls) -> QueenState:
        hives: dict[str, AnyHive] = {}
        if settings.local_hive():
            hives["localhost"] = Hive("localhost")
        return cls(hives=hives, scheduler=Scheduler(hives), db=QueenDB(paths.queen_db_file()))

    def health(self) -> QueenHealth:
        return QueenHealth(version=current_version(), pid=os.getpid(), started_at=self.started_at,
                           listen_host=self.listen_host)

    async def start(self) -> None:
        for hive in self.hives.values():
            await hive.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.scheduler.reap_idle(), name="reap-idle"),
                       loop.create_task(self._watch_hives(), name="watch-hives")]

    async def _watch_hives(self) -> None:
        """Mark remote hives unreachable when their heartbeats stop (runs for the queen's lifetime)."""
        while True:
            await asyncio.sleep(min(1.0, settings.heartbeat_s()))
            timeout = settings.hive_timeout_s()
            for hive in list(self.hives.values()):
                if isinstance(hive, RemoteHive):
                    hive.check_alive(timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.jobs.close()
        for hive in self.hives.values():
            await hive.close()
        await self.forwarder.close()
