"""The queen's side of KV caches kept across unloads (rbee/queen/slot_restore.py) through the hive seam, for the
embedded hive and for a remote one (its real API, in-process), with real llama-server workers of the tiny model;
and the executor's unload hook."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rbee.contracts.workers import WorkerMode
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.service import Hive
from rbee.queen import slot_restore
from rbee.queen.executor import Executor
from rbee.queen.hive_seam import AnyWorker, HiveSeam
from rbee.queen.loads import Loads
from rbee.queen.remote_hive import RemoteHive
from tests.queen.test_remote_hive import ENTRY, hosted, report

JOIN = "join-token-for-slot-restore"
PROMPT = " ".join(["the river and the brown fox"] * 250)
KEY, KEY2 = "ab12cd34ef56", "0123456789abcdef"


@pytest.fixture(params=["local", "remote"])
async def hive(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               llama_server: Path, tiny_model: Path) -> AsyncIterator[HiveSeam]:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RBEE_LLAMA_SERVER", str(llama_server))
    monkeypatch.setenv("RBEE_WORKER_THREADS", "1")
    monkeypatch.setenv("RBEE_WORKER_CONTEXT", "2048")
    local = Hive("h1", state=tmp_path / "state")
    await local.catalog.add_file(tiny_model, "tiny")
    if request.param == "local":
        yield local
    else:
        app = create_app(HiveConfig(alias="h1", queen_url="http://127.0.0.1:9", token=JOIN, address="127.0.0.1"),
                         local)
        remote = RemoteHive(report().model_copy(update={"models": await local.catalog.entries()}), JOIN)
        await remote.client.http.aclose()
        remote.client.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               headers={"Authorization": f"Bearer {JOIN}"})
        yield remote
        await remote.close()
    await local.close()


async def spawn(hive: HiveSeam) -> AnyWorker:
    entry = await hive.resolve("tiny")
    return await hive.spawn_worker(entry, WorkerMode.GENERATE)


async def cached(worker: AnyWorker, prompt: str, slot: int) -> int:
    assert worker.url is not None
    async with httpx.AsyncClient(base_url=worker.url, timeout=60,
                                 headers={"Authorization": f"Bearer {worker.api_key}"}) as c:
        resp = await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "id_slot": slot})
    assert resp.status_code == 200, resp.text
    tokens: int = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    return tokens


async def test_save_then_stop_and_restore_carry_a_conversations_cache_to_a_new_worker(hive: HiveSeam) -> None:
    record = slot_restore.SlotRecord()
    first = await spawn(hive)
    await cached(first, PROMPT, 0)
    # (1, "not hex") and (7, ...) are dropped: not a key, not a slot of it
    saved = await slot_restore.save_then_stop(hive, first, [(0, KEY), (1, "not hex"), (7, KEY2)], record)
    assert [s.key for s in saved] == [KEY] and saved[0].tokens > 1000
    assert hive.supervisor.get(first.id) is None and record.holders("tiny", KEY) == ["h1"]

    second = await spawn(hive)
    assert await slot_restore.restore(hive, second, 0, KEY, record) is True
    assert await cached(second, PROMPT + " again", 0) > 1000
    record.note("h1", [saved[0].model_copy(update={"key": KEY2})])  # a stale hint
    assert await slot_restore.restore(hive, second, 1, KEY2, record) is False  # never saved: False, no raise
    assert not record.holds("h1", "tiny", KEY2)  # the hive said it holds no such key: the hint is gone
    assert await slot_restore.restore(hive, first, 0, KEY, record) is False  # a worker that is gone
    assert record.holds("h1", "tiny", KEY)  # still held: a failure elsewhere does not forget it
    assert await record.refresh(hive) and record.holders("tiny", KEY) == ["h1"]
    await hive.supervisor.stop(second.id)


async def test_a_stop_with_nothing_recent_is_a_plain_stop(hive: HiveSeam) -> None:
    worker = await spawn(hive)
    assert await slot_restore.save_then_stop(hive, worker, []) == []
    assert hive.supervisor.get(worker.id) is None
    assert (await hive.slot_cache()).saved == []


async def test_the_executors_unload_saves_what_its_hook_names(hive: HiveSeam) -> None:
    executor = Executor({"h1": hive}, Loads(), lambda: None, lambda key, error: None)
    worker = await spawn(hive)
    await cached(worker, PROMPT, 1)
    executor.recent_slots = lambda worker_id: [(1, KEY)] if worker_id == worker.id else []
    await executor.unload(worker, "keep_alive expired")
    assert hive.supervisor.get(worker.id) is None
    assert executor.slot_record.holders("tiny", KEY) == ["h1"]
    assert [(s.model, s.key) for s in (await hive.slot_cache()).saved] == [("tiny", KEY)]


async def test_a_hive_that_cannot_save_gets_a_plain_stop_and_a_bad_restore_answer_is_false() -> None:
    """An older hive (no such route) and a hostile one (an answer that is not a restore) cost only the cache."""
    calls: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path))
        if request.url.path.endswith("/restore"):
            return httpx.Response(200, json={"restored": "yes", "tokens": -5})
        if request.method == "DELETE":
            return httpx.Response(200, json=json.loads(hosted("h1-w1").info.model_dump_json()))
        return httpx.Response(404, text="no such route")

    remote = RemoteHive(report(hosted("h1-w1")), JOIN)
    await remote.client.http.aclose()
    remote.client.http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    worker = remote.supervisor.get("h1-w1")
    assert worker is not None and worker.spec.model == ENTRY
    assert await slot_restore.restore(remote, worker, 0, KEY) is False
    assert await slot_restore.save_then_stop(remote, worker, [(0, KEY)]) == []
    assert calls[-2:] == [("POST", "/v1/hive/workers/h1-w1/stop"), ("DELETE", "/v1/hive/workers/h1-w1")]
    assert remote.supervisor.get("h1-w1") is None and worker.state.value == "stopped"
    await remote.close()
