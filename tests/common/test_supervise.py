"""Background loops never die silently: a failure is logged with its traceback and the loop runs again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from rbee.common import supervise


async def test_a_failing_loop_is_logged_and_started_again_with_a_growing_back_off(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    waited: list[float] = []
    forever, fourth = asyncio.Event(), asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError(f"bug {len(runs)}")
        if len(runs) == 3:
            return  # a loop that ends is started again too
        fourth.set()
        await forever.wait()

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    with caplog.at_level(logging.ERROR, logger="rbee.common.supervise"):
        task = asyncio.create_task(supervise.supervised("reap-idle", loop, sleep=sleep, clock=lambda: 0.0))
        await asyncio.wait_for(fourth.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert waited == [1.0, 2.0, 4.0]
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None  # the traceback is in the log
    assert "bug 1" in str(failures[0].exc_info[1]) and "reap-idle" in failures[0].getMessage()
    assert any("returned" in r.getMessage() for r in caplog.records)


async def test_a_loop_that_ran_well_for_a_while_starts_again_soon() -> None:
    now = [0.0]
    waited: list[float] = []
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        now[0] += 120.0  # a good two minutes before each failure
        raise RuntimeError("rare")

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await supervise.supervised("usage", loop, sleep=sleep, clock=lambda: now[0])
    assert waited == [1.0, 1.0, 1.0]


async def test_every_runs_a_pass_per_interval_and_reports_only_finished_passes() -> None:
    order: list[str] = []
    passes = 0
    third = asyncio.Event()

    def reported() -> None:
        nonlocal passes
        passes += 1
        order.append("reported")
        if passes == 2:
            third.set()

    async def step() -> None:
        order.append("step")
        if order.count("step") == 2:
            raise RuntimeError("a bad pass")  # not reported; `supervised` starts the loop again

    loop = supervise.every(lambda: 0.0, step, on_pass=reported)
    task = asyncio.create_task(supervise.supervised("t", loop, sleep=lambda s: asyncio.sleep(0)))
    await asyncio.wait_for(third.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert order[:5] == ["step", "reported", "step", "step", "reported"]


async def test_every_waits_first_unless_told_to_run_at_once() -> None:
    for first, expected in ((False, ["wait", "step"]), (True, ["step", "wait"])):
        seen: list[str] = []

        async def sleep(seconds: float, seen: list[str] = seen) -> None:
            seen.append("wait")
            if len(seen) >= 2:
                raise asyncio.CancelledError

        async def step(seen: list[str] = seen) -> None:
            seen.append("step")

        with pytest.raises(asyncio.CancelledError):
            await supervise.every(lambda: 5.0, step, first=first, sleep=sleep)()
        assert seen[:2] == expected
