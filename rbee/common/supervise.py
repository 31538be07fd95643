"""Background loops that never die silently.

A daemon's long-lived loops (the queen's keep_alive reaper, hive watch, usage flush and audit pruning; a
hive's heartbeats and device watch) run under `supervised`: an exception is logged with its traceback and
the loop starts again after a back-off (1, 2, 4 ... 60 s, back to 1 s after a minute of good running);
a loop that returns is started again too, since each is meant to run for the daemon's lifetime. Only
cancellation (the daemon stopping) ends it. So one bad iteration never stops keep_alive unloads,
heartbeats or usage writes for good without a word in the log.

A periodic loop is written as one pass (`Step`) and run by `every`, which waits, runs the pass and reports
it (`on_pass`): the queen shows each loop's passes in /v1/status, so a stuck loop is seen, and a test waits
for "the reaper has run since" instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Loop = Callable[[], Awaitable[None]]
Step = Callable[[], Awaitable[None]]  # one pass of a periodic loop
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
HEALTHY_S = 60.0  # a loop that ran this long before failing starts again at the shortest back-off


OnFailure = Callable[[str, str], None]  # (loop name, what went wrong)


async def supervised(name: str, loop: Loop, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                     clock: Callable[[], float] = time.monotonic, on_failure: OnFailure | None = None) -> None:
    """Run `loop` until cancelled, starting it again whenever it fails or returns."""
    backoff = MIN_BACKOFF_S
    while True:
        started = clock()
        try:
            await loop()
            what = "it returned"
            log.error("background loop %s returned; starting it again in %.0f s", name, backoff)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            what = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.exception("background loop %s failed; starting it again in %.0f s", name, backoff)
        if on_failure is not None:
            on_failure(name, what)
        if clock() - started >= HEALTHY_S:
            backoff = MIN_BACKOFF_S
        await sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


def start(name: str, loop: Loop, on_failure: OnFailure | None = None) -> asyncio.Task[None]:
    """`loop` as a supervised task of the running event loop, named `name`."""
    return asyncio.get_running_loop().create_task(supervised(name, loop, on_failure=on_failure), name=name)


def every(seconds: Callable[[], float], step: Step, *, first: bool = False,
          on_pass: Callable[[], None] | None = None,
          sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Loop:
    """A loop that runs `step` every `seconds()` (read each time, so a setting may change), after the first
    wait unless `first`; `on_pass` is told of each pass that ended without an exception."""
    async def loop() -> None:
        wait = not first
        while True:
            if wait:
                await sleep(seconds())
            wait = True
            await step()
            if on_pass is not None:
                on_pass()
    return loop
