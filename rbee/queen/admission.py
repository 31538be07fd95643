"""The queue of requests waiting for a worker (DESIGN.md decision 5, step 5): bounded, FIFO per model.

Each waiter has one future, and it is the only way a waiter is woken:
  - a free slot is handed to the first waiter in line that may use it, as its lease (`offer`): the waiter
    returns it without looking again, so nobody overtakes anybody and no stampede follows a freed slot;
  - when something else changed (a worker loaded or stopped, memory freed, settings changed), the front of
    each line is told to decide again (`look_again`): it may start a load, or wait on;
  - a load that failed fails the waiters it was for (`fail`).
The waiter's deadlines (the queue's timeout, the client's X-Rbee-Timeout) and its client leaving are handled
here, in `wait`, and only here; a lease handed to a waiter that is gone by then is released.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from rbee.queen.errors import ClientGone, DeadlineExceeded, QueueFull


class Releasable(Protocol):
    def release(self) -> None: ...


L = TypeVar("L", bound=Releasable)


@dataclass(eq=False)
class Waiter(Generic[L]):
    """One request in line for `key`; `grant()` leases it a worker with a free slot it may use, or None."""

    key: Hashable
    model: str
    grant: Callable[[], L | None]
    joined: float
    woken: asyncio.Future[L | None] = field(init=False)
    taken: bool = False  # its lease went to its request

    def __post_init__(self) -> None:
        self.woken = asyncio.get_running_loop().create_future()


class Admission(Generic[L]):
    def __init__(self, limits: Callable[[], tuple[int, int, float]], free_slots: Callable[[Hashable], int]) -> None:
        self._limits = limits  # (waiting per model, waiting in all, seconds a request may wait)
        self._free_slots = free_slots  # the free slots of a key's ready workers, wherever they are
        self._lines: dict[Hashable, deque[Waiter[L]]] = {}
        self._counts: Counter[str] = Counter()

    def waiting(self) -> dict[str, int]:
        """Requests waiting for a worker, per model."""
        return {name: n for name, n in self._counts.items() if n > 0}

    def busy(self, key: Hashable) -> bool:
        """Whether requests wait for `key` (a newcomer queues behind them)."""
        return bool(self._lines.get(key))

    def first(self, waiter: Waiter[L]) -> bool:
        """Whether `waiter` is at the front of its line."""
        line = self._lines.get(waiter.key)
        return line is not None and bool(line) and line[0] is waiter

    def timeout(self) -> float:
        return self._limits()[2]

    def join(self, key: Hashable, model: str, grant: Callable[[], L | None], now: float) -> Waiter[L]:
        """A place at the end of `key`'s line; QueueFull (503, Retry-After) when the queue is full."""
        per_model, overall, _ = self._limits()
        if self._counts[model] >= per_model or self._counts.total() >= overall:
            raise QueueFull(f"Too many requests are waiting for '{model}'; retry shortly.",
                            headers={"Retry-After": "2"})
        waiter = Waiter(key, model, grant, now)
        self._lines.setdefault(key, deque()).append(waiter)
        self._counts[model] += 1
        return waiter

    def leave(self, waiter: Waiter[L]) -> None:
        """`waiter` is out of line (served, refused, gone); a lease handed to it and not taken is released."""
        line = self._lines.get(waiter.key)
        if line is not None and waiter in line:
            line.remove(waiter)
            self._counts[waiter.model] -= 1
            if not line:
                del self._lines[waiter.key]
        if not waiter.taken and waiter.woken.done() and not waiter.woken.cancelled() \
                and waiter.woken.exception() is None:
            lease = waiter.woken.result()
            if lease is not None:
                lease.release()
        waiter.woken.cancel()

    def offer(self, key: Hashable) -> int:
        """Hand free slots of `key`'s workers to its waiters, first in line first; how many were handed."""
        handed = 0
        free = self._free_slots(key) if self._lines.get(key) else 0
        for waiter in list(self._lines.get(key, ())):
            if handed == free:
                break
            if waiter.woken.done():
                continue  # it is deciding again already
            lease = waiter.grant()  # None: it may not use the free slots (pinned elsewhere, or a retry)
            if lease is not None:
                self._take(waiter)
                waiter.woken.set_result(lease)
                handed += 1
        return handed

    def look_again(self) -> None:
        """Something changed: the front of each line decides again (after the free slots were handed out)."""
        for key in list(self._lines):
            self.offer(key)
            line = self._lines.get(key)
            if line and not line[0].woken.done():
                line[0].woken.set_result(None)

    def fail(self, key: Hashable, error: BaseException) -> None:
        """The load `key`'s waiters waited for failed: each of them fails with `error`."""
        for waiter in list(self._lines.get(key, ())):
            if not waiter.woken.done():
                waiter.woken.set_exception(error)

    def _take(self, waiter: Waiter[L]) -> None:
        line = self._lines[waiter.key]
        line.remove(waiter)
        self._counts[waiter.model] -= 1
        if not line:
            del self._lines[waiter.key]

    async def wait(self, waiter: Waiter[L], until: float, deadline: float | None, gone: asyncio.Future[None] | None,
                   now: Callable[[], float], recheck: float | None = None) -> L | None:
        """Its lease, or None when it is to decide again (woken so, or at `recheck`). QueueFull when the queue's
        timeout (`until`) passes, DeadlineExceeded when the client's `deadline` does, ClientGone when `gone` ends
        first; all times on the `now` clock."""
        if waiter.woken.done() and not waiter.woken.cancelled() and waiter.woken.exception() is None \
                and waiter.woken.result() is None:
            waiter.woken = asyncio.get_running_loop().create_future()  # it looked again: a new turn
        ends = [t for t in (until, deadline, recheck) if t is not None]
        waits: set[asyncio.Future[Any]] = {waiter.woken} if gone is None else {waiter.woken, gone}
        await asyncio.wait(waits, timeout=max(0.0, min(ends) - now()), return_when=asyncio.FIRST_COMPLETED)
        if waiter.woken.done():
            lease = waiter.woken.result()
            waiter.taken = lease is not None
            return lease
        if gone is not None and gone.done():
            raise ClientGone("The client left while its request was queued.")
        if deadline is not None and now() >= deadline:
            raise DeadlineExceeded("The request's deadline (X-Rbee-Timeout) passed while it waited for a worker.")
        if now() >= until:
            raise QueueFull(f"Waited {self.timeout():.0f} s for a free slot on '{waiter.model}'; retry shortly.",
                            headers={"Retry-After": "5"})
        return None  # its grouping cap passed: decide again
