"""The job runner used by queen and hive: run a coroutine, record its events, replay them.

A job's body is an async function that takes an `emit` callback. Every event is kept, so a
client that connects late (or reconnects) sees the whole history, then follows live.
The stream ends only with a terminal event; silence never ends a job.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from rbee.contracts.jobs import JobEvent, JobEventType, JobInfo, JobKind

log = logging.getLogger(__name__)


class Emit(Protocol):
    def __call__(
        self,
        type: JobEventType = JobEventType.PROGRESS,
        message: str = "",
        *,
        current: float | None = None,
        total: float | None = None,
        unit: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None: ...


JobBody = Callable[[Emit], Awaitable[dict[str, Any] | None]]


class JobFailed(Exception):
    """Raised by a job body to end with an `error` event whose message the user should see."""


class Job:
    def __init__(self, kind: JobKind, subject: str | None = None) -> None:
        self.id = f"job-{uuid.uuid4().hex[:12]}"
        self.kind = kind
        self.subject = subject
        self.created_at = time.time()
        self.events: list[JobEvent] = []
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def state(self) -> JobEventType:
        return self.events[-1].type if self.events else JobEventType.STARTED

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].type.terminal

    def info(self) -> JobInfo:
        return JobInfo(job_id=self.id, kind=self.kind, state=self.state, created_at=self.created_at,
                       subject=self.subject, last=self.events[-1] if self.events else None)

    def emit(
        self,
        type: JobEventType = JobEventType.PROGRESS,
        message: str = "",
        *,
        current: float | None = None,
        total: float | None = None,
        unit: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        if self.finished:
            return
        self.events.append(
            JobEvent(
                job_id=self.id,
                seq=len(self.events),
                type=type,
                message=message,
                current=current,
                total=total,
                unit=unit,
                data=data,
            )
        )
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _has_event(self, seq: int) -> bool:
        return len(self.events) > seq

    async def follow(self, after: int = -1) -> AsyncIterator[JobEvent]:
        """Every event with `seq > after`, live, until the terminal one."""
        next_seq = after + 1
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._has_event, next_seq))
            while next_seq < len(self.events):
                event = self.events[next_seq]
                next_seq += 1
                yield event
                if event.type.terminal:
                    return

    async def wait(self) -> JobEvent:
        """Wait for the terminal event and return it."""
        last: JobEvent | None = None
        async for event in self.follow():
            last = event
        assert last is not None
        return last


class JobRunner:
    """Starts jobs, keeps them for a while after they end, cancels them on request."""

    def __init__(self, keep_finished: int = 200) -> None:
        self._jobs: dict[str, Job] = {}
        self._keep_finished = keep_finished

    def start(self, kind: JobKind, body: JobBody, subject: str | None = None) -> Job:
        job = Job(kind, subject)
        self._jobs[job.id] = job
        self._prune()
        job.emit(JobEventType.STARTED, f"{kind} started")
        job.task = asyncio.get_running_loop().create_task(self._run(job, body), name=job.id)
        return job

    async def _run(self, job: Job, body: JobBody) -> None:
        try:
            result = await body(job.emit)
        except asyncio.CancelledError:
            job.emit(JobEventType.CANCELLED, "cancelled")
        except JobFailed as exc:
            job.emit(JobEventType.ERROR, str(exc))
        except Exception as exc:  # a bug: its text may hold internals, so the client gets the kind only
            log.exception("job %s (%s) failed", job.id, job.kind)
            job.emit(JobEventType.ERROR, f"{job.kind} failed with an unexpected error ({type(exc).__name__}); "
                                         "the log has the details")
        else:
            job.emit(JobEventType.DONE, "done", data=result)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.finished or job.task is None:
            return False
        job.task.cancel()
        return True

    async def close(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _prune(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job_id]
