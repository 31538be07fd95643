"""Everything a running queen holds, built once at start-up."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from rbee.common.jobs import JobRunner
from rbee.common.version import current as current_version
from rbee.contracts.status import QueenHealth
from rbee.hive.service import Hive
from rbee.queen.proxy import Forwarder
from rbee.queen.scheduler import Scheduler


def queen_state(request: Request) -> QueenState:
    """The state of the queen serving `request`."""
    state: QueenState = request.app.state.queen
    return state


@dataclass
class QueenState:
    hives: dict[str, Hive]
    scheduler: Scheduler
    forwarder: Forwarder = field(default_factory=Forwarder)
    jobs: JobRunner = field(default_factory=JobRunner)
    started_at: float = field(default_factory=time.time)
    _reaper: asyncio.Task[None] | None = None

    @classmethod
    def create(cls) -> QueenState:
        local = Hive("localhost")
        hives = {local.alias: local}
        return cls(hives=hives, scheduler=Scheduler(hives))

    def health(self) -> QueenHealth:
        return QueenHealth(version=current_version(), pid=os.getpid(), started_at=self.started_at)

    async def start(self) -> None:
        for hive in self.hives.values():
            await hive.start()
        self._reaper = asyncio.get_running_loop().create_task(self.scheduler.reap_idle(), name="reap-idle")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await self.jobs.close()
        for hive in self.hives.values():
            await hive.close()
        await self.forwarder.close()
