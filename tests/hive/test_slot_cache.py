"""KV caches kept across unloads (rbee/hive/slot_cache.py), through the hive's API (rbee/hive/app.py), with real
llama-server workers of the tiny model: save on stop, restore into a new worker, the budget, the time bound, and a
hostile caller that holds the join token."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.common import tls_ca
from rbee.common.tls import TLSFiles
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.service import Hive
from rbee.hive.worker import STOP_GRACE_S

JOIN = "join-token-for-slot-tests"
PROMPT = " ".join(["the river and the brown fox"] * 250)  # about 1500 tokens
KEY, KEY2, KEY3 = "ab12cd34ef56", "0123456789abcdef", "feedfacecafe"


@dataclass
class Unit:
    hive: Hive
    api: httpx.AsyncClient
    folder: Path

    async def spawn(self, model: str = "tiny", context: int = 2048, slots: int = 2) -> dict[str, Any]:
        resp = await self.api.post("/v1/hive/workers", json={"model": model, "context": context, "slots": slots})
        assert resp.status_code == 201, resp.text
        info: dict[str, Any] = resp.json()["info"]
        return info

    async def stop(self, worker: dict[str, Any], save: list[dict[str, Any]]) -> httpx.Response:
        return await self.api.post(f"/v1/hive/workers/{worker['id']}/stop", json={"save": save})

    async def restore(self, worker: dict[str, Any], slot: int | str, key: str) -> httpx.Response:
        return await self.api.post(f"/v1/hive/workers/{worker['id']}/slots/{slot}/restore", json={"key": key})

    async def saved(self) -> list[tuple[str, str]]:
        resp = await self.api.get("/v1/hive/slot-cache")
        assert resp.status_code == 200
        return sorted((s["model"], s["key"]) for s in resp.json()["saved"])

    def files(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir())


async def complete(unit: Unit, worker: dict[str, Any], prompt: str, slot: int,
                   tls: ssl.SSLContext | None = None) -> int:
    """One completion on `slot` of the worker; the prompt tokens the engine reports as cached."""
    process = unit.hive.supervisor.get(worker["id"])
    assert process is not None
    async with httpx.AsyncClient(base_url=worker["url"], timeout=60, verify=tls or True,
                                 headers={"Authorization": f"Bearer {process.api_key}"}) as c:
        resp = await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "id_slot": slot,
                                                     "cache_prompt": True})
    assert resp.status_code == 200, resp.text
    cached: int = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    return cached


@pytest.fixture
async def unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_server: Path, tiny_model: Path,
               tiny_stop_model: Path) -> AsyncIterator[Unit]:
    async with hive_unit(tmp_path, monkeypatch, llama_server, tiny_model, tiny_stop_model) as made:
        yield made


@contextlib.asynccontextmanager
async def hive_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_server: Path, tiny_model: Path,
                    tiny_stop_model: Path, tls: TLSFiles | None = None) -> AsyncIterator[Unit]:
    """A hive with the tiny models, its API on an in-process transport; `tls`: its workers speak HTTPS."""
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RBEE_LLAMA_SERVER", str(llama_server))
    monkeypatch.setenv("RBEE_WORKER_THREADS", "1")
    hive = Hive("unit", state=tmp_path / "state", tls=tls)
    await hive.catalog.add_file(tiny_model, "tiny")
    await hive.catalog.add_file(tiny_stop_model, "tiny-stop")
    config = HiveConfig(alias="unit", queen_url="http://127.0.0.1:9", token=JOIN, address="127.0.0.1")
    app = create_app(config, hive)  # lifespan not run: no queen link
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hive", timeout=60,
                                 headers={"Authorization": f"Bearer {JOIN}"}) as api:
        yield Unit(hive, api, tmp_path / "state" / "hive" / "slot-cache")
    await hive.close()


async def test_a_slot_saved_on_stop_is_restored_into_a_new_worker_and_its_prompt_is_cached(unit: Unit) -> None:
    first = await unit.spawn()
    assert await complete(unit, first, PROMPT, 0) == 0
    resp = await unit.stop(first, [{"slot": 0, "key": KEY}, {"slot": 1, "key": KEY2}])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["worker"]["state"] == "stopped" and unit.hive.supervisor.get(first["id"]) is None
    assert [(s["key"], s["tokens"] > 1000) for s in body["saved"]] == [(KEY, True)]
    assert "slot 1" in body["skipped"][0]  # slot 1 never held a prompt
    assert stat.S_IMODE(unit.folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in unit.folder.iterdir())
    assert await unit.saved() == [("tiny", KEY)]

    second = await unit.spawn()
    restored = (await unit.restore(second, 0, KEY)).json()
    assert restored["restored"] is True and restored["tokens"] == body["saved"][0]["tokens"]
    assert await complete(unit, second, PROMPT + " again", 1) == 0  # slot 1: nothing restored there
    assert await complete(unit, second, PROMPT + " again", 0) > 1000


async def test_a_hive_with_tls_saves_and_restores_through_its_workers_https(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_server: Path, tiny_model: Path,
        tiny_stop_model: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    tls_ca.ensure_ca(folder)
    cert, key = tls_ca.issue("unit", ["127.0.0.1"], folder)
    (folder / "hive.pem").write_bytes(cert)
    (folder / "hive.key").write_bytes(key)
    files = TLSFiles(folder / "hive.pem", folder / "hive.key", folder / "ca.pem")
    async with hive_unit(tmp_path, monkeypatch, llama_server, tiny_model, tiny_stop_model, tls=files) as unit:
        first = await unit.spawn()
        assert first["url"].startswith("https://127.0.0.1:")
        assert await complete(unit, first, PROMPT, 0, files.client_context()) == 0
        saved = (await unit.stop(first, [{"slot": 0, "key": KEY}])).json()["saved"]
        assert [(s["key"], s["tokens"] > 1000) for s in saved] == [(KEY, True)]
        second = await unit.spawn()
        restored = (await unit.restore(second, 0, KEY)).json()
        assert restored["restored"] is True and restored["tokens"] == saved[0]["tokens"]
        assert await complete(unit, second, PROMPT + " again", 0, files.client_context()) > 1000


async def test_a_corrupted_a_missing_and_a_refused_file_are_not_restored_and_are_deleted(unit: Unit) -> None:
    first = await unit.spawn()
    await complete(unit, first, PROMPT, 0)
    await complete(unit, first, PROMPT + " two", 1)
    saved = (await unit.stop(first, [{"slot": 0, "key": KEY}, {"slot": 1, "key": KEY2}])).json()["saved"]
    assert len(saved) == 2
    await complete(unit, second := await unit.spawn(), PROMPT, 0)
    assert (await unit.stop(second, [{"slot": 0, "key": KEY3}])).status_code == 200
    by_key = {f.split("-")[1].removesuffix(".bin"): unit.folder / f for f in unit.files() if f.endswith(".bin")}
    data = bytearray(by_key[KEY].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the KV data: llama-server itself would load it
    by_key[KEY].write_bytes(bytes(data))
    by_key[KEY2].unlink()

    small = await unit.spawn(context=512)  # KEY3's 1500 tokens do not fit a slot of 512: llama-server refuses
    for key, why in ((KEY, "changed since it was saved"), (KEY2, "gone"), (KEY3, "refused the file")):
        resp = await unit.restore(small, 0, key)
        assert resp.status_code == 200 and resp.json()["restored"] is False and why in resp.json()["reason"]
    assert await unit.saved() == [] and unit.files() == ["index.json"]
    assert await complete(unit, small, "the river", 0) == 0  # the worker still answers


async def test_a_worker_drained_for_an_eviction_is_saved_before_it_stops(unit: Unit) -> None:
    """The queen drains the workers it evicts (so no request takes them meanwhile) before it stops them."""
    worker = await unit.spawn()
    await complete(unit, worker, PROMPT, 0)
    process = unit.hive.supervisor.get(worker["id"])
    assert process is not None
    process.begin_drain()
    body = (await unit.stop(worker, [{"slot": 0, "key": KEY}])).json()
    assert [s["key"] for s in body["saved"]] == [KEY] and body["worker"]["state"] == "stopped", body
    assert await unit.saved() == [("tiny", KEY)]


async def test_over_the_budget_the_least_recently_used_file_is_deleted(unit: Unit,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_SLOT_CACHE_MIB", "1")  # each file is about 0.4 MiB: two fit, three do not
    first = await unit.spawn()
    await complete(unit, first, PROMPT, 0)
    await complete(unit, first, PROMPT + " two", 1)
    await unit.stop(first, [{"slot": 0, "key": KEY}, {"slot": 1, "key": KEY2}])
    second = await unit.spawn()
    assert (await unit.restore(second, 0, KEY)).json()["restored"] is True  # KEY is now the most recently used
    await complete(unit, second, PROMPT + " three", 1)
    body = (await unit.stop(second, [{"slot": 1, "key": KEY3}])).json()
    assert [s["key"] for s in body["saved"]] == [KEY3]
    assert await unit.saved() == [("tiny", KEY), ("tiny", KEY3)]
    assert len([f for f in unit.files() if f.endswith(".bin")]) == 2
    listing = (await unit.api.get("/v1/hive/slot-cache")).json()
    assert listing["used_bytes"] <= listing["budget_bytes"] == 2**20


async def test_a_budget_of_zero_saves_nothing(unit: Unit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_SLOT_CACHE_MIB", "0")
    worker = await unit.spawn()
    await complete(unit, worker, PROMPT, 0)
    body = (await unit.stop(worker, [{"slot": 0, "key": KEY}])).json()
    assert body["saved"] == [] and "RBEE_SLOT_CACHE_MIB=0" in body["skipped"][0]
    assert body["worker"]["state"] == "stopped" and await unit.saved() == []


@pytest.mark.parametrize(("name", "value"), [("RBEE_SLOT_CACHE_MIB", "lots"), ("RBEE_SLOT_CACHE_MIB", "-1"),
                                             ("RBEE_SLOT_SAVE_TIMEOUT_MS", "0")])
async def test_a_bad_setting_saves_nothing_says_why_and_still_stops(unit: Unit, monkeypatch: pytest.MonkeyPatch,
                                                                     name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    worker = await unit.spawn(context=256, slots=1)
    await complete(unit, worker, "the river", 0)
    resp = await unit.stop(worker, [{"slot": 0, "key": KEY}])
    assert resp.status_code == 200 and resp.json()["worker"]["state"] == "stopped"
    assert name in resp.json()["skipped"][0] and await unit.saved() == []
    assert (await unit.api.get("/v1/hive/slot-cache")).status_code == 200


async def test_a_save_that_cannot_finish_in_time_is_abandoned_and_the_worker_stops(
    unit: Unit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-server defers a save while its slot is busy: a long generation on the only slot keeps it from ever
    starting, so the bound (0.3 s here) is what ends the wait."""
    monkeypatch.setenv("RBEE_SLOT_SAVE_TIMEOUT_MS", "300")
    worker = await unit.spawn(context=16384, slots=1)
    process = unit.hive.supervisor.get(worker["id"])
    assert process is not None
    generating = asyncio.Event()

    async def generate() -> None:
        async with httpx.AsyncClient(base_url=worker["url"], timeout=120,
                                     headers={"Authorization": f"Bearer {process.api_key}"}) as c:
            with contextlib.suppress(httpx.HTTPError):
                async with c.stream("POST", "/v1/completions", json={
                        "prompt": "the river", "max_tokens": 16000, "id_slot": 0, "stream": True}) as resp:
                    async for _ in resp.aiter_lines():
                        generating.set()

    stream = asyncio.ensure_future(generate())
    await asyncio.wait_for(generating.wait(), 60)
    started = time.monotonic()
    resp = await unit.stop(worker, [{"slot": 0, "key": KEY}])
    took = time.monotonic() - started
    await stream
    body = resp.json()
    assert resp.status_code == 200 and body["saved"] == [] and "not saved within 0.3 s" in body["skipped"][0]
    assert body["worker"]["state"] == "stopped" and process.pid is not None and process.state.value == "stopped"
    assert body["save_s"] < 0.3 + 1.0  # the bound, and a margin for a busy machine
    # then the stop: a llama-server streaming an answer outlives SIGTERM, so it takes the grace and a SIGKILL
    assert took < 0.3 + STOP_GRACE_S + 3.0
    assert await unit.saved() == [] and [f for f in unit.files() if f != "index.json"] == []


# -- a hostile caller with the join token ---------------------------------------------------------------------

BAD_KEYS = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "AB12CD34EF", "abc", "a" * 65, "", "ab12cd34/../x",
            "ab12cd34.bin", "ab12 cd34"]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_are_refused_before_anything_is_done(unit: Unit, key: str) -> None:
    worker = await unit.spawn(context=256, slots=1)
    resp = await unit.restore(worker, 0, key)
    assert resp.status_code == 400 and "key" in resp.json()["error"]["message"]
    resp = await unit.stop(worker, [{"slot": 0, "key": key}])
    assert resp.status_code == 400 and "key" in resp.json()["error"]["message"]
    assert unit.hive.supervisor.get(worker["id"]) is not None  # a refused stop stops nothing
    assert not unit.folder.exists() or unit.files() == []
    assert not [p for p in unit.folder.parents[2].rglob("*") if "passwd" in p.name or p.suffix == ".part"]


@pytest.mark.parametrize("slot", ["99999999999", "-1", "512", "1e3", "0x1", "01", " 0"])
async def test_absurd_slot_ids_are_refused(unit: Unit, slot: str) -> None:
    worker = await unit.spawn(context=256, slots=1)
    resp = await unit.restore(worker, slot, KEY)
    assert resp.status_code == 400 and "slot" in resp.json()["error"]["message"]
    if slot.lstrip("-").isdigit() and not 0 <= int(slot) <= 511:  # in a stop: refused, nothing stopped
        resp = await unit.stop(worker, [{"slot": int(slot), "key": KEY}])
        assert resp.status_code == 400 and unit.hive.supervisor.get(worker["id"]) is not None


async def test_a_slot_the_worker_lacks_an_unknown_worker_and_another_models_key_are_refused(unit: Unit) -> None:
    tiny = await unit.spawn()
    await complete(unit, tiny, PROMPT, 0)
    await unit.stop(tiny, [{"slot": 0, "key": KEY}])
    other = await unit.spawn("tiny-stop")
    resp = await unit.restore(other, 2, KEY)  # it has slots 0 and 1
    assert resp.status_code == 400 and "no slot 2" in resp.json()["error"]["message"]
    resp = await unit.restore(other, 0, KEY)  # saved for 'tiny', not for 'tiny-stop'
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await unit.api.post("/v1/hive/workers/unit-w99/slots/0/restore", json={"key": KEY})
    assert resp.status_code == 404
    resp = await unit.api.post("/v1/hive/workers/unit-w99/stop", json={"save": []})
    assert resp.status_code == 404
    assert await unit.saved() == [("tiny", KEY)]  # nothing of it was touched
    async with httpx.AsyncClient(transport=unit.api._transport, base_url="http://hive") as stranger:
        assert (await stranger.get("/v1/hive/slot-cache")).status_code == 401
        assert (await stranger.post(f"/v1/hive/workers/{other['id']}/slots/0/restore",
                                    json={"key": KEY})).status_code == 401
