"""The queen's catalog routes over remote hives: inspect, remove and disk, with the hives faked as transports."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from rbee.contracts.hives import HiveReport, HostedWorker
from rbee.contracts.models import ModelEntry
from rbee.contracts.status import EngineInfo
from rbee.contracts.workers import WorkerInfo, WorkerState
from rbee.queen import catalog_routes
from rbee.queen.auth import Principal
from rbee.queen.errors import QueenError, handle_queen_error
from rbee.queen.loads import Loads
from rbee.queen.remote_hive import RemoteHive

ENTRY = ModelEntry(name="org/m-GGUF:Q4_K_M", path="/h/m.gguf", size_bytes=1000, source="hf", added_at=0.0)


def remote(alias: str, handler: Any, **update: Any) -> RemoteHive:
    report = HiveReport(alias=alias, version="0.1.0", address="10.0.0.5", port=7835, engine=EngineInfo(path="/e"),
                        devices=[], memory_total=10**9).model_copy(update=update)
    hive = RemoteHive(report, "t")
    hive.client.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return hive


def holds(name: str) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/hive/report":
            return httpx.Response(503)
        if request.url.raw_path.decode() == f"/v1/hive/models/{quote(name, safe='')}":
            return httpx.Response(200, content=ENTRY.model_dump_json())
        return httpx.Response(404, json={"error": {"message": "The model does not exist on this hive"}})
    return handler


def down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("unreachable")


def app_over(*hives: RemoteHive, loads: Loads | None = None) -> tuple[Starlette, list[tuple[str, ...]]]:
    audited: list[tuple[str, ...]] = []

    async def audit(who: Principal, request: Any, action: str, target: str, detail: str = "") -> None:
        audited.append((action, target, detail))

    app = Starlette(routes=catalog_routes.routes, exception_handlers={QueenError: handle_queen_error})
    app.state.queen = SimpleNamespace(audit=audit, scheduler=SimpleNamespace(
        hives_for=lambda pinned: [h for h in hives if pinned in (None, h.alias)], loads=loads or Loads()))

    async def with_principal(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["principal"] = Principal("admin")
        await app(scope, receive, send)

    return with_principal, audited  # type: ignore[return-value]


async def test_rm_goes_past_a_hive_that_does_not_answer_to_the_one_that_has_it() -> None:
    app, audited = app_over(remote("h1", down), remote("h2", holds(ENTRY.name)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://q") as client:
        resp = await client.delete(f"/v1/catalog/{quote(ENTRY.name, safe='')}")
        assert resp.status_code == 200 and resp.json()["hive"] == "h2"
        assert audited == [("model.remove", ENTRY.name, "h2")]
        missing = await client.delete("/v1/catalog/other")  # h1 could not be asked: it may be there
        assert missing.status_code == 502 and "hive 'h1'" in missing.json()["error"]["message"]


async def test_rm_of_a_model_answering_requests_is_refused_naming_its_workers() -> None:
    info = WorkerInfo(id="h2-w1", model=ENTRY.name, hive="h2", state=WorkerState.READY, url="http://10.0.0.5:4000",
                      slots=2, context_size=512, started_at=1.0)
    h2 = remote("h2", holds(ENTRY.name), workers=[HostedWorker(info=info, api_key="k", entry=ENTRY)])
    busy = h2.supervisor.get("h2-w1")
    assert busy is not None
    loads = Loads()
    loads.of(busy).in_flight = 1  # a lease the queen handed out
    app, audited = app_over(h2, loads=loads)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://q") as client:
        resp = await client.delete(f"/v1/catalog/{quote(ENTRY.name, safe='')}")
        assert resp.status_code == 409 and "answering requests on h2-w1" in resp.json()["error"]["message"]
        assert audited == []
        loads.of(busy).in_flight = 0
        assert (await client.delete(f"/v1/catalog/{quote(ENTRY.name, safe='')}")).status_code == 200


async def test_info_names_the_hives_reason_and_storage_lists_each_hives_disk() -> None:
    h1 = remote("h1", holds("x"), models=[ENTRY], models_free_bytes=7 * 10**9)
    app, _ = app_over(h1, remote("h2", holds("x")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://q") as client:
        resp = await client.get("/v1/catalog/nope?hive=h1")
        assert resp.status_code == 404 and "does not exist on this hive" in resp.json()["error"]["message"]
        disks = (await client.get("/v1/storage")).json()
        assert disks == [{"hive": "h1", "models": 1, "models_bytes": 1000, "free_bytes": 7 * 10**9},
                         {"hive": "h2", "models": 0, "models_bytes": 0, "free_bytes": None}]
