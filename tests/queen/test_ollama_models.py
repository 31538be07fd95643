"""A pull job's events as Ollama's progress lines (rbee/queen/ollama_models.py)."""

from __future__ import annotations

from typing import Any

import pytest

from rbee.contracts.jobs import JobEvent, JobEventType
from rbee.queen.ollama_models import progress_line


def event(kind: JobEventType, message: str = "", **extra: Any) -> JobEvent:
    return JobEvent(job_id="job-1", seq=0, type=kind, message=message, **extra)


@pytest.mark.parametrize(("given", "line"), [
    (event(JobEventType.STARTED, "model.pull started"), {"status": "pulling manifest"}),
    (event(JobEventType.PROGRESS, "m-Q4_K_M.gguf", current=10.0, total=30.0, unit="bytes", data={"speed": 5}),
     {"status": "pulling m-Q4_K_M.gguf", "digest": "m-Q4_K_M.gguf", "total": 30, "completed": 10}),
    (event(JobEventType.PROGRESS, "verifying m-Q4_K_M.gguf"), {"status": "verifying m-Q4_K_M.gguf"}),
    (event(JobEventType.LOG, "a line of a build"), None),
    (event(JobEventType.PROGRESS), None),
    (event(JobEventType.DONE, "done", data={"name": "m"}), {"status": "success"}),
    (event(JobEventType.ERROR, "there is no model repo x/y"), {"error": "there is no model repo x/y"}),
    (event(JobEventType.CANCELLED, "cancelled"), {"error": "the pull was cancelled"}),
])
def test_each_event_as_ollamas_progress(given: JobEvent, line: dict[str, Any] | None) -> None:
    assert progress_line(given) == line
