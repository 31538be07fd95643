from __future__ import annotations

import asyncio

import pytest

from rbee.common.jobs import Emit, JobFailed, JobRunner
from rbee.contracts.jobs import JobEventType, JobKind

T = JobEventType


async def test_events_are_kept_and_replayed_to_late_followers() -> None:
    runner = JobRunner()

    async def body(emit: Emit) -> dict[str, str]:
        for i in range(3):
            emit(current=i + 1, total=3, unit="steps", message=f"step {i + 1}")
        return {"answer": "42"}

    job = runner.start(JobKind.ENGINE_INSTALL, body)
    final = await job.wait()
    assert final.type is T.DONE and final.data == {"answer": "42"}
    replay = [e async for e in job.follow()]
    assert [e.type for e in replay] == [T.STARTED, T.PROGRESS, T.PROGRESS, T.PROGRESS, T.DONE]
    assert [e.seq for e in replay] == list(range(5))
    assert [e.seq for e in [e async for e in job.follow(after=2)]] == [3, 4]


async def test_a_silent_job_is_not_ended_by_silence() -> None:
    runner = JobRunner()
    release = asyncio.Event()

    async def body(emit: Emit) -> None:
        await release.wait()

    job = runner.start(JobKind.WORKER_SPAWN, body)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job.wait(), 0.2)
    assert not job.finished
    release.set()
    assert (await job.wait()).type is T.DONE


async def test_failures_and_cancellation_are_terminal_events() -> None:
    runner = JobRunner()

    async def fails(emit: Emit) -> None:
        raise JobFailed("cmake was not found")

    async def crashes(emit: Emit) -> None:
        raise RuntimeError("boom")

    async def waits(emit: Emit) -> None:
        await asyncio.sleep(60)

    failed = runner.start(JobKind.ENGINE_INSTALL, fails)
    crashed = runner.start(JobKind.ENGINE_INSTALL, crashes)
    waiting = runner.start(JobKind.ENGINE_INSTALL, waits)
    await asyncio.sleep(0)
    assert runner.cancel(waiting.id)
    assert (await failed.wait()).message == "cmake was not found"
    crash = (await crashed.wait()).message  # a bug's own words stay in the log, not in the client's events
    assert "RuntimeError" in crash and "boom" not in crash and "the log has the details" in crash
    cancelled = await waiting.wait()
    assert cancelled.type is T.CANCELLED
    assert not runner.cancel(waiting.id)  # already over
    assert not runner.cancel("job-unknown")
