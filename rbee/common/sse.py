"""Server-sent events: encoding the streams the queen produces."""

from __future__ import annotations

import json
from typing import Any


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
