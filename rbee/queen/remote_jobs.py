"""A job on a remote hive (a pull or a copy onto it) as the queen follows it.

The queen starts the job there (`POST /v1/hive/pulls` or `/v1/hive/fetches`), follows its events
(`GET /v1/hive/jobs/{id}/events`) and re-emits their progress in its own job; cancelling the queen's job
cancels the hive's (`DELETE /v1/hive/jobs/{id}`) and waits until the hive says it has cleaned up. A dropped
event stream is followed again from its last event, FOLLOW_RETRIES times.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.jobs import JobCreated, JobEvent, JobEventType
from rbee.contracts.models import ModelEntry
from rbee.queen.hive_client import HiveCallFailed, HiveClient

_HIVE_JOB_ID = re.compile(r"^job-[0-9a-f]{12}$")  # what rbee/common/jobs.py makes; nothing else goes in a path
FOLLOW_RETRIES = 5  # a dropped event stream is followed again (from the last event) this many times
CANCEL_WAIT_S = 30.0  # how long a cancelled job waits for the hive to say it cleaned up


async def run(client: HiveClient, job_id: str, what: str, emit: Emit) -> ModelEntry:
    """Follow the hive's job `job_id` (just started) to its end: the catalog entry it made, or `JobFailed`."""
    if not _HIVE_JOB_ID.fullmatch(job_id):
        raise JobFailed(f"hive '{client.alias}' answered a job id rbee does not make ({job_id[:40]!r})")
    try:
        last = await _follow(client, job_id, emit)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_cancel(client, job_id), CANCEL_WAIT_S)
        raise
    if last.type is JobEventType.ERROR:
        raise JobFailed(last.message)
    if last.type is JobEventType.CANCELLED:
        raise JobFailed(f"the {what} was cancelled on hive '{client.alias}'")
    return ModelEntry.model_validate(last.data or {})


def job_id_of(raw: bytes) -> str:
    return JobCreated.model_validate_json(raw).job_id


async def _follow(client: HiveClient, job_id: str, emit: Emit) -> JobEvent:
    """Re-emit the hive job's progress until its terminal event, which is returned. A dropped stream is
    followed again from its last event; a hive that stays away fails the job (and is told to stop it)."""
    import httpx  # loaded with the hive client that made the stream (hive_client.py imports it lazily)

    after, failures = -1, 0
    while True:
        try:
            async for event in client.events(job_id, after):
                after, failures = event.seq, 0
                if event.type.terminal:
                    return event
                if event.type is not JobEventType.STARTED:
                    emit(event.type, event.message, current=event.current, total=event.total, unit=event.unit,
                         data=event.data)
            reason = "its event stream ended early"
        except HiveCallFailed as exc:  # the hive answered: it lost the job (it restarted), or refuses us
            raise JobFailed(f"hive '{client.alias}' lost the pull: {exc}") from exc
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        failures += 1
        if failures > FOLLOW_RETRIES:
            with contextlib.suppress(HiveCallFailed):
                await client.call("DELETE", f"/v1/hive/jobs/{job_id}", wait_s=5)
            raise JobFailed(f"lost hive '{client.alias}' during the pull ({reason}); "
                            f"`rbee hive logs {client.alias}` shows what it did")
        await asyncio.sleep(min(0.5 * failures, 3.0))


async def _cancel(client: HiveClient, job_id: str) -> None:
    """Cancel the hive's job and wait for its terminal event (its partial files are gone by then)."""
    await client.call("DELETE", f"/v1/hive/jobs/{job_id}", wait_s=10)
    async for event in client.events(job_id, -1):
        if event.type.terminal:
            return
