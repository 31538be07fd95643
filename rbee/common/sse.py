"""Server-sent events: encoding the streams the queen produces."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

if TYPE_CHECKING:
    from rbee.common.jobs import Job


def encode(data: Any, event: str | None = None, event_id: str | int | None = None) -> bytes:
    """One SSE frame; dicts and models are sent as JSON."""
    if hasattr(data, "model_dump_json"):
        payload = data.model_dump_json(exclude_none=True)
    elif isinstance(data, str):
        payload = data
    else:
        payload = json.dumps(data)
    head = ""
    if event_id is not None:
        head += f"id: {event_id}\n"
    if event:
        head += f"event: {event}\n"
    return f"{head}data: {payload}\n\n".encode()


def job_events(job: Job, request: Request) -> StreamingResponse:
    """`GET .../jobs/{id}/events`, on the queen and on a hive alike: the job's events after the client's
    `Last-Event-ID` (all of them without one), until its terminal event."""
    last = request.headers.get("last-event-id", "")
    after = int(last) if last.isdigit() else -1

    async def frames() -> AsyncIterator[bytes]:
        async for event in job.follow(after):
            yield encode(event, event=event.type.value, event_id=event.seq)

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
