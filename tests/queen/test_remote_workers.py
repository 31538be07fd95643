"""A remote hive's reports move its workers only along the worker state machine (rbee/queen/remote_workers.py):
a report that would move one backwards, out of a terminal state or sideways is refused, logged, and changes
nothing of the queen's view of it; the queen's own moves (drain, stop, unreachable) follow the machine too."""

from __future__ import annotations

import logging

import pytest

from rbee.contracts.workers import WORKER_TRANSITIONS, WorkerState
from rbee.queen.remote_hive import RemoteHive
from tests.queen.test_remote_hive import hosted, report

S = WorkerState


def _moved(worker_state: WorkerState) -> tuple[RemoteHive, str]:
    """A hive whose worker h1-w1 the queen knows in `worker_state` (reached along the machine's edges)."""
    hive = RemoteHive(report(hosted("h1-w1", S.STARTING)), "token")
    path = {S.STARTING: [], S.READY: [S.READY], S.ERROR: [S.ERROR], S.DRAINING: [S.READY, S.DRAINING],
            S.UNREACHABLE: [S.READY, S.UNREACHABLE]}[worker_state]
    for state in path:
        hive.heard_from(report(hosted("h1-w1", state)), "token")
    worker = hive.supervisor.get("h1-w1")
    assert worker is not None and worker.state is worker_state
    return hive, "h1-w1"


@pytest.mark.parametrize(("known", "reported"), [
    (S.READY, S.STARTING), (S.READY, S.PENDING), (S.ERROR, S.READY), (S.ERROR, S.STARTING),
    (S.DRAINING, S.READY), (S.DRAINING, S.STARTING), (S.UNREACHABLE, S.STARTING), (S.STARTING, S.PENDING),
])
async def test_a_report_that_moves_a_worker_where_it_cannot_go_changes_nothing(
        known: WorkerState, reported: WorkerState, caplog: pytest.LogCaptureFixture) -> None:
    assert reported not in WORKER_TRANSITIONS[known]
    hive, worker_id = _moved(known)
    worker = hive.supervisor.get(worker_id)
    assert worker is not None
    before = (worker.state, worker.url, worker.api_key, worker.memory, worker.error)
    lying = hosted(worker_id, reported)
    lying.info = lying.info.model_copy(update={"url": "http://127.0.0.1:4999", "memory_bytes": 1, "error": "lies"})
    lying = lying.model_copy(update={"api_key": "stolen"})
    caplog.set_level(logging.DEBUG, "rbee.queen.remote_workers")
    for _ in range(3):  # every heartbeat says it again
        hive.heard_from(report(lying), "token")
    assert hive.supervisor.get(worker_id) is worker
    assert (worker.state, worker.url, worker.api_key, worker.memory, worker.error) == before
    refusals = [r for r in caplog.records if f"cannot go from {known} to {reported}" in r.getMessage()]
    assert len(refusals) == 1  # logged once, not at every heartbeat
    stale = known in (S.READY, S.DRAINING)  # a heartbeat built before the change the queen knows of
    assert refusals[0].levelno == (logging.DEBUG if stale else logging.WARNING)
    await hive.close()


@pytest.mark.parametrize(("known", "reported"), [
    (S.STARTING, S.READY), (S.STARTING, S.ERROR), (S.READY, S.ERROR), (S.READY, S.DRAINING),
    (S.UNREACHABLE, S.READY), (S.DRAINING, S.ERROR),
])
async def test_a_report_along_the_machine_is_taken(known: WorkerState, reported: WorkerState) -> None:
    hive, worker_id = _moved(known)
    moved = hosted(worker_id, reported)
    moved.info = moved.info.model_copy(update={"url": "http://127.0.0.1:4001", "error": "it died"})
    hive.heard_from(report(moved), "token")
    worker = hive.supervisor.get(worker_id)
    assert worker is not None and worker.state is reported and worker.url == "http://127.0.0.1:4001"
    assert (worker.failed_at is not None) == (reported is S.ERROR)
    await hive.close()


async def test_the_queens_own_moves_follow_the_machine() -> None:
    hive, worker_id = _moved(S.ERROR)
    failed = hive.supervisor.get(worker_id)
    assert failed is not None
    failed.begin_drain()  # nothing to drain: it failed
    hive.supervisor.mark_unreachable()
    assert failed.state is S.ERROR
    stopped = await hive.supervisor.stop(worker_id)  # nothing answers there; it stays the failure it was
    assert stopped is failed and failed.state is S.ERROR
    hive.heard_from(report(hosted("h1-w2", S.READY)), "token")
    ready = hive.supervisor.get("h1-w2")
    assert ready is not None
    hive.supervisor.mark_unreachable()
    assert ready.state is S.UNREACHABLE
    ready.begin_drain()
    assert ready.state is S.DRAINING
    assert await hive.supervisor.stop("h1-w2") is ready and ready.state is S.STOPPED
    await hive.close()


async def test_a_worker_first_seen_takes_the_state_its_hive_says() -> None:
    hive = RemoteHive(report(hosted("h1-w1", S.DRAINING), hosted("h1-w2", S.STARTING),
                             hosted("h1-w3", S.ERROR)), "token")
    states = {w.id: w.state for w in hive.supervisor.workers()}
    assert states == {"h1-w1": S.DRAINING, "h1-w2": S.STARTING}  # a failed one is not adopted
    await hive.close()
