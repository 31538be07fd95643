"""The queen's side of a pull onto a remote hive: follow the hive's job, re-emit its progress, cancel it.

The hive is faked with an httpx transport that answers as rbee/hive/app.py does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rbee.common.jobs import JobFailed
from rbee.contracts.hives import HiveReport
from rbee.contracts.jobs import JobEvent, JobEventType
from rbee.contracts.models import ModelEntry
from rbee.contracts.status import EngineInfo
from rbee.hive.model_store import ModelInUse, ModelUnavailable
from rbee.queen.hive_client import HiveCallFailed
from rbee.queen.remote_hive import RemoteHive

JOB = "job-0123456789ab"
ENTRY = ModelEntry(name="org/m-GGUF:Q4_K_M", path="/h/models/org/m-GGUF/m.gguf", size_bytes=1000, source="hf",
                   added_at=0.0)


def report(**update: Any) -> HiveReport:
    return HiveReport(alias="h1", version="0.1.0", address="10.0.0.5", port=7835, engine=EngineInfo(path="/e"),
                      devices=[], memory_total=10**9).model_copy(update=update)


def frame(seq: int, type: JobEventType, **kw: Any) -> bytes:
    event = JobEvent(job_id=JOB, seq=seq, type=type, **kw)
    return f"id: {seq}\nevent: {type.value}\ndata: {event.model_dump_json()}\n\n".encode()


class FakeHive:
    """Answers the queen's calls; `hang` keeps the event stream open after the progress until a DELETE."""

    def __init__(self, terminal: bytes, hang: bool = False, drops: int = 0) -> None:
        self.terminal, self.hang, self.drops = terminal, hang, drops  # drops: streams cut before the end
        self.followed_from: list[str | None] = []
        self.calls: list[tuple[str, str, bytes, str | None]] = []
        self.deleted = asyncio.Event()
        self.report = report(models=[ENTRY], models_free_bytes=5 * 10**9)

    async def _stream(self) -> AsyncIterator[bytes]:
        yield frame(0, JobEventType.STARTED, message="model.pull started")
        yield frame(1, JobEventType.PROGRESS, message="m.gguf", current=500, total=1000, unit="bytes",
                    data={"speed": 100, "eta": 5.0})
        if self.drops:
            self.drops -= 1
            return
        if self.hang:
            await self.deleted.wait()
            yield frame(2, JobEventType.CANCELLED, message="cancelled")
            return
        yield self.terminal

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.calls.append((request.method, request.url.raw_path.decode(), body, request.headers.get("authorization")))
        path = request.url.path
        if request.method == "POST" and path == "/v1/hive/pulls":
            return httpx.Response(201, json={"job_id": JOB})
        if request.method == "GET" and path == f"/v1/hive/jobs/{JOB}/events":
            self.followed_from.append(request.headers.get("last-event-id"))
            if self.deleted.is_set():
                return httpx.Response(200, content=frame(2, JobEventType.CANCELLED, message="cancelled"))
            if self.followed_from[-1] == "1":
                return httpx.Response(200, content=self.terminal)
            return httpx.Response(200, content=self._stream())
        if request.method == "DELETE" and path == f"/v1/hive/jobs/{JOB}":
            self.deleted.set()
            return httpx.Response(200, json={"job_id": JOB, "cancelled": True})
        if request.method == "GET" and path == "/v1/hive/report":
            return httpx.Response(200, content=self.report.model_dump_json())
        if path.startswith("/v1/hive/models/"):
            name = request.url.path[len("/v1/hive/models/"):]
            if name == "busy":
                return httpx.Response(409, json={"error": {"message": "'busy' is answering requests"}})
            if name != ENTRY.name:
                return httpx.Response(404, json={"error": {"message": f"The model '{name}' does not exist"}})
            if request.method == "DELETE":
                self.report = report(models=[], models_free_bytes=6 * 10**9)
                return httpx.Response(200, content=ENTRY.model_dump_json())
        return httpx.Response(500, json={"error": {"message": "unexpected"}})


def remote(fake: FakeHive, **update: Any) -> RemoteHive:
    hive = RemoteHive(report(**update), "join-token")
    hive.client.http = httpx.AsyncClient(transport=httpx.MockTransport(fake),
                                     headers={"Authorization": "Bearer join-token"})
    return hive


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.heard = asyncio.Event()

    def __call__(self, type: JobEventType = JobEventType.PROGRESS, message: str = "", **kw: Any) -> None:
        self.events.append({"type": type, "message": message, **kw})
        self.heard.set()


async def test_a_pull_sends_the_hub_settings_re_emits_progress_and_updates_the_catalog_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.lan:8080")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fake = FakeHive(frame(2, JobEventType.DONE, message="done", data=ENTRY.model_dump(mode="json")))
    hive = remote(fake)
    assert await hive.catalog.entries() == [] and (await hive.disk()).free_bytes is None
    emit = Recorder()
    entry = await hive.pull("org/m-GGUF:Q4_K_M", emit)
    assert entry == ENTRY
    method, path, body, auth = fake.calls[0]
    assert (method, path, auth) == ("POST", "/v1/hive/pulls", "Bearer join-token")
    assert json.loads(body) == {"model": "org/m-GGUF:Q4_K_M", "hf_endpoint": "http://mirror.lan:8080",
                                "hf_token": "hf_secret"}
    assert [e["type"] for e in emit.events] == [JobEventType.PROGRESS]  # the hive's "started" is not repeated
    assert emit.events[0]["current"] == 500 and emit.events[0]["unit"] == "bytes"
    assert [m.name for m in await hive.catalog.entries()] == [ENTRY.name]  # before any heartbeat
    disk = await hive.disk()
    assert (disk.models, disk.models_bytes, disk.free_bytes) == (1, 1000, 5 * 10**9)
    await hive.close()


async def test_a_dropped_event_stream_is_followed_again_from_its_last_event() -> None:
    fake = FakeHive(frame(2, JobEventType.DONE, message="done", data=ENTRY.model_dump(mode="json")), drops=1)
    hive = remote(fake)
    emit = Recorder()
    assert await hive.pull("org/m-GGUF:Q4_K_M", emit) == ENTRY
    assert fake.followed_from == [None, "1"] and len(emit.events) == 1  # nothing repeated
    await hive.close()


async def test_a_hive_whose_stream_keeps_dropping_fails_the_pull_and_is_told_to_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rbee.queen.remote_jobs.FOLLOW_RETRIES", 1)
    fake = FakeHive(b"", drops=10)  # every stream ends before a terminal event
    hive = remote(fake)
    with pytest.raises(JobFailed, match="lost hive 'h1' during the pull"):
        await hive.pull("org/m-GGUF:Q4_K_M", Recorder())
    assert fake.calls[-1][:2] == ("DELETE", f"/v1/hive/jobs/{JOB}")
    await hive.close()


async def test_a_token_the_contract_refuses_is_not_quoted_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "s" * 5000)
    fake = FakeHive(b"")
    hive = remote(fake)
    with pytest.raises(JobFailed, match="invalid hf_token") as caught:
        await hive.pull("org/m-GGUF:Q4_K_M", Recorder())
    assert "sss" not in str(caught.value) and fake.calls == []
    await hive.close()


async def test_an_error_on_the_hive_fails_the_job_with_its_message() -> None:
    fake = FakeHive(frame(2, JobEventType.ERROR, message="not enough disk space: ... in /home/h1/models"))
    hive = remote(fake)
    with pytest.raises(JobFailed, match=r"not enough disk space: .* /home/h1/models"):
        await hive.pull("org/m-GGUF:Q4_K_M", Recorder())
    await hive.close()


async def test_cancelling_the_queens_job_cancels_the_hives_and_waits_for_it() -> None:
    fake = FakeHive(b"", hang=True)
    hive = remote(fake)
    emit = Recorder()
    task = asyncio.create_task(hive.pull("org/m-GGUF:Q4_K_M", emit))
    await asyncio.wait_for(emit.heard.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ("DELETE", f"/v1/hive/jobs/{JOB}") in [(m, p) for m, p, _, _ in fake.calls]
    assert fake.calls[-1][:2] == ("GET", f"/v1/hive/jobs/{JOB}/events")  # it waited for the hive's "cancelled"
    await hive.close()


async def test_info_and_rm_are_asked_of_the_hive() -> None:
    fake = FakeHive(b"")
    hive = remote(fake, models=[ENTRY])
    with pytest.raises(ModelUnavailable, match="does not exist"):
        await hive.detail("nope/x-GGUF:Q4_K_M")
    assert fake.calls[-1][1] == "/v1/hive/models/nope%2Fx-GGUF%3AQ4_K_M"  # one path segment, quoted
    with pytest.raises(ModelInUse):
        await hive.remove("busy")
    with pytest.raises(ModelUnavailable):
        await hive.remove("../../etc")
    assert fake.calls[-1][1] == "/v1/hive/models/..%2F..%2Fetc"
    assert await hive.remove(ENTRY.name) == ENTRY
    assert await hive.catalog.entries() == [] and (await hive.disk()).free_bytes == 6 * 10**9
    await hive.close()


async def test_a_hive_too_old_for_remote_catalogs_is_told_to_upgrade() -> None:
    hive = remote(FakeHive(b""), version="0.0.9")
    hive.client.http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404, text="Not Found")))
    with pytest.raises(JobFailed, match=r"runs rbee 0\.0\.9.*`rbee hive upgrade h1`"):
        await hive.pull("org/m-GGUF:Q4_K_M", Recorder())
    with pytest.raises(ModelUnavailable, match="rbee hive upgrade h1"):
        await hive.detail("org/m-GGUF:Q4_K_M")
    with pytest.raises(HiveCallFailed, match="rbee hive upgrade h1"):
        await hive.remove("org/m-GGUF:Q4_K_M")
    await hive.close()


async def test_a_hive_that_does_not_answer_is_a_clear_failure() -> None:
    hive = RemoteHive(report(address="127.0.0.1", port=1), "join-token")  # nothing listens there
    with pytest.raises(JobFailed, match="hive 'h1' did not start the pull"):
        await hive.pull("org/m-GGUF:Q4_K_M", Recorder())
    with pytest.raises(HiveCallFailed, match="did not answer"):
        await hive.remove("x")
    await hive.close()


async def test_a_report_fetched_after_a_pull_is_checked_like_one_sent() -> None:
    from rbee.contracts.hives import HostedWorker
    from rbee.contracts.workers import WorkerInfo, WorkerState

    fake = FakeHive(frame(2, JobEventType.DONE, message="done", data=ENTRY.model_dump(mode="json")))
    info = WorkerInfo(id="h1-w9", model=ENTRY.name, hive="h1", state=WorkerState.READY, slots=1, context_size=64,
                      url="http://127.0.0.1:7833/v1/admin/shutdown?", started_at=1.0)
    fake.report = report(models=[ENTRY], workers=[HostedWorker(info=info, api_key="k", entry=ENTRY)])
    hive = remote(fake)
    await hive.pull("org/m-GGUF:Q4_K_M", Recorder())
    assert hive.supervisor.get("h1-w9") is None  # a worker "at" the queen's admin API is not adopted
    fake.report = report(models=[ENTRY], address="10.0.0.99")
    await hive.refresh()
    assert hive.report.address == "10.0.0.5"  # nor is an address the hive was not reached at
    await hive.close()
