"""The queen's copies (rbee/queen/copies.py): a peer first, the next source when one fails, the hub last.

Hives are RemoteHive objects over an httpx MockTransport that answers as rbee/hive/app.py does.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.common import settings
from rbee.common.jobs import JobFailed
from rbee.contracts.copies import HiveFetch
from rbee.contracts.jobs import JobEventType
from rbee.contracts.models import ModelEntry
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.downloads import sha256_of
from rbee.hive.service import Hive
from rbee.queen.copies import Copies, for_request
from rbee.queen.errors import QueueFull
from rbee.queen.remote_hive import RemoteHive
from tests.fixtures.tiny_gguf import write_tiny_model
from tests.hive.test_copies import serving
from tests.queen.test_remote_pull import Recorder, frame, report

NAME = "org/m-GGUF:Q4_K_M"
ENTRY = ModelEntry(name=NAME, path="/h/models/org/m-GGUF/m.gguf", files=["/h/models/org/m-GGUF/m.gguf"],
                   size_bytes=1000, source="hf", repo="org/m-GGUF", added_at=0.0)
SHA = "ab" * 32
JOB = "job-0123456789ab"


class Fake:
    """One hive: holds `models`; its share, fetch and pull answers can be made to fail."""

    def __init__(self, alias: str, address: str, models: list[ModelEntry], share_fails: bool = False,
                 fetch_error: str | None = None, gate: asyncio.Event | None = None) -> None:
        self.alias, self.address, self.models = alias, address, models
        self.share_fails, self.fetch_error, self.gate = share_fails, fetch_error, gate
        self.calls: list[tuple[str, str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"null")
        path = request.url.path
        self.calls.append((request.method, path, body))
        if path == "/v1/hive/shares":
            if self.share_fails:
                return httpx.Response(503, json={"error": {"message": "going away"}})
            return httpx.Response(201, json={"share_id": "share-0123456789abcdef", "token": "t" * 43,
                                             "entry": ENTRY.model_dump(mode="json"),
                                             "files": [{"name": "org/m-GGUF/m.gguf", "size": 1000, "sha256": SHA}]})
        if path in ("/v1/hive/fetches", "/v1/hive/pulls"):
            return httpx.Response(201, json={"job_id": JOB})
        if path == f"/v1/hive/jobs/{JOB}/events":
            if self.gate is not None:
                await self.gate.wait()
            started = self.calls[-2][1]
            if started == "/v1/hive/fetches" and self.fetch_error:
                return httpx.Response(200, content=frame(0, JobEventType.ERROR, message=self.fetch_error))
            self.models = [ENTRY]
            return httpx.Response(200, content=frame(0, JobEventType.DONE, data=ENTRY.model_dump(mode="json")))
        if path == "/v1/hive/report":
            return httpx.Response(200, content=report(alias=self.alias, address=self.address, models=self.models)
                                  .model_dump_json())
        return httpx.Response(500, json={"error": {"message": "unexpected"}})


def remote(fake: Fake) -> RemoteHive:
    hive = RemoteHive(report(alias=fake.alias, address=fake.address, models=fake.models), "join")
    hive.client.http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    return hive


def fleet(*fakes: Fake) -> tuple[Copies, dict[str, RemoteHive]]:
    hives = {f.alias: remote(f) for f in fakes}
    return Copies(hives), hives  # type: ignore[arg-type]


def sha256_of_file(path: Path) -> str:
    return sha256_of(path)


def _share_app(hive: Hive) -> Starlette:
    async def serve(request: Request) -> Response:
        return hive.shares.serve(request)
    return Starlette(routes=[Route("/v1/hive/shares/{share_id}/files/{index:int}", serve)])


def fetches(fake: Fake) -> list[HiveFetch]:
    return [HiveFetch.model_validate(b) for m, p, b in fake.calls if p == "/v1/hive/fetches"]


async def test_a_peer_is_asked_to_share_for_the_targets_address_and_the_target_fetches_from_it() -> None:
    a, b = Fake("a", "10.0.0.1", [ENTRY]), Fake("b", "10.0.0.2", [])
    copies, hives = fleet(a, b)
    placed = await copies.ensure_on(hives["b"], NAME, Recorder(), allow_hub=True)
    assert placed.origin == "hive a" and placed.entry.name == NAME
    assert [(m, p, body["peer_address"]) for m, p, body in a.calls if p == "/v1/hive/shares"] == \
        [("POST", "/v1/hive/shares", "10.0.0.2")]
    [asked] = fetches(b)
    assert asked.source_url == "http://10.0.0.1:7835" and asked.files[0].sha256 == SHA
    assert not [c for c in b.calls if c[1] == "/v1/hive/pulls"]  # never the hub
    assert NAME in [m.name for m in await hives["b"].catalog.entries()]


async def test_a_failing_source_is_reported_and_the_next_one_then_the_hub_tried() -> None:
    gone = Fake("a", "10.0.0.1", [ENTRY], share_fails=True)
    corrupt = Fake("c", "10.0.0.3", [ENTRY])
    target = Fake("b", "10.0.0.2", [], fetch_error="org/m-GGUF/m.gguf from hive 'c': sha256 ... does not match")
    copies, hives = fleet(gone, corrupt, target)
    emit = Recorder()
    placed = await copies.ensure_on(hives["b"], NAME, emit, allow_hub=True)
    assert placed.origin == "the hub"
    messages = [e["message"] for e in emit.events]
    assert any("the copy from hive 'a' failed" in m and "going away" in m for m in messages), messages
    assert any("the copy from hive 'c' failed" in m and "sha256" in m for m in messages), messages
    assert [p for _, p, _ in target.calls if p in ("/v1/hive/fetches", "/v1/hive/pulls")] == \
        ["/v1/hive/fetches", "/v1/hive/pulls"]


async def test_without_a_source_the_api_never_goes_to_the_hub() -> None:
    b = Fake("b", "10.0.0.2", [])
    copies, hives = fleet(b)
    with pytest.raises(JobFailed, match="RBEE_API_PULLS=hub"):
        await copies.ensure_on(hives["b"], NAME, Recorder(), allow_hub=False)
    assert b.calls == []


async def test_two_pulls_of_one_model_onto_one_hive_make_one_copy_and_both_wait_for_it() -> None:
    gate = asyncio.Event()
    a, b = Fake("a", "10.0.0.1", [ENTRY]), Fake("b", "10.0.0.2", [], gate=gate)
    copies, hives = fleet(a, b)
    first, second = Recorder(), Recorder()
    both = asyncio.gather(copies.ensure_on(hives["b"], NAME, first, allow_hub=True),
                          copies.ensure_on(hives["b"], NAME, second, allow_hub=True))
    await second.heard.wait()
    assert "already being copied onto b" in second.events[0]["message"]
    gate.set()
    one, two = await both
    assert one == two and one.origin == "hive a"
    assert len(fetches(b)) == 1


async def test_a_model_already_there_is_not_copied() -> None:
    copies, hives = fleet(Fake("a", "10.0.0.1", [ENTRY]), Fake("b", "10.0.0.2", [ENTRY]))
    placed = await copies.ensure_on(hives["b"], "org/m-GGUF", Recorder(), allow_hub=True)  # by its hub name too
    assert placed.origin == "already there"


async def test_the_queens_own_hive_receives_a_copy_from_a_remote_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded hive (no API of its own) is a target: the source shares for the queen's own address."""
    monkeypatch.setenv("RBEE_MODELS_DIR", str(tmp_path / "models"))
    source = create_app(HiveConfig(alias="a", queen_url="http://127.0.0.1:9", token="join-a", address="127.0.0.1"),
                        Hive("a", state=tmp_path / "state-a"))
    model = write_tiny_model(tmp_path / "added" / "tiny.gguf")
    await source.state.hive.catalog.add_file(model, "tiny")
    local = Hive("localhost", state=tmp_path / "state-local")
    async with serving(source) as url:
        a = RemoteHive(report(alias="a", address="127.0.0.1", port=int(url.rsplit(":", 1)[1]),
                              models=await source.state.hive.catalog.entries()), "join-a")
        copies = Copies({"localhost": local, "a": a})
        placed = await copies.ensure_on(local, "tiny", Recorder(), allow_hub=False)
        await a.close()
    assert placed.origin == "hive a"
    assert Path(placed.entry.path).read_bytes() == model.read_bytes()
    assert (await local.catalog.get("tiny")) is not None
    await source.state.jobs.close()


async def test_a_request_waits_for_its_copy_until_its_deadline_and_the_copy_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_API_PULLS", raising=False)
    gate = asyncio.Event()
    a, b = Fake("a", "10.0.0.1", [ENTRY]), Fake("b", "10.0.0.2", [], gate=gate)
    copies, hives = fleet(a, b)
    assert not await for_request(copies, hives["b"], "org/other-GGUF:Q4_K_M", time.monotonic() + 5)  # no source
    with pytest.raises(QueueFull, match="the copy goes on"):
        await for_request(copies, hives["b"], NAME, time.monotonic() + 0.2)
    gate.set()  # the client left; the copy did not
    assert await for_request(copies, hives["b"], NAME, time.monotonic() + 5)
    assert len(fetches(b)) == 1 and NAME in [m.name for m in await hives["b"].catalog.entries()]


def test_rbee_api_pulls_is_peers_or_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_API_PULLS", raising=False)
    assert settings.api_pulls_from_hub() is False
    monkeypatch.setenv("RBEE_API_PULLS", "hub")
    assert settings.api_pulls_from_hub() is True
    monkeypatch.setenv("RBEE_API_PULLS", "internet")
    with pytest.raises(settings.SettingsError, match="RBEE_API_PULLS"):
        settings.api_pulls_from_hub()


async def test_the_queens_own_hive_is_a_source_for_a_remote_target_after_the_remote_peers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RBEE_QUEEN_PORT", "7999")
    local = Hive("localhost", state=tmp_path / "state")
    await local.catalog.add_file(write_tiny_model(tmp_path / "added" / "tiny.gguf"), "tiny")
    gone = Fake("a", "127.0.0.3", [ENTRY.model_copy(update={"name": "tiny"})], share_fails=True)
    b = Fake("b", "127.0.0.2", [])
    copies = Copies({"localhost": local, "a": remote(gone), "b": (target := remote(b))})
    assert [h.alias for h, _ in await copies.sources("tiny", target)] == ["a", "localhost"]
    assert [h.alias for h, _ in await copies.sources("tiny", local)] == ["a"]  # not a source for itself
    placed = await copies.ensure_on(target, "tiny", Recorder(), allow_hub=False)
    assert placed.origin == "hive localhost"
    [asked] = fetches(b)
    assert asked.from_queen and asked.source == "localhost" and asked.source_url.endswith(":7999")
    assert asked.files[0].sha256 == sha256_of_file(tmp_path / "added" / "tiny.gguf")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_share_app(local), client=("127.0.0.2", 1)),
                                 base_url="http://queen") as client:  # the share was opened for b's address
        got = await client.get(f"/v1/hive/shares/{asked.share_id}/files/0",
                               headers={"Authorization": f"Bearer {asked.token.get_secret_value()}"})
    assert got.status_code == 200 and got.content == (tmp_path / "added" / "tiny.gguf").read_bytes()
