"""The hive's pull, model and job endpoints (rbee/hive/app.py), in-process against the fake hub.

The hub settings come with each pull, as the queen sends them: the fake hub is reachable only through the
`hf_endpoint` in the request, and the gated repo's token only through `hf_token`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from rbee.contracts.catalog import HivePull
from rbee.hive import downloads
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.service import Hive
from tests.fixtures.fake_hub import FakeHub, HubFile
from tests.fixtures.tiny_gguf import write_tiny_model

JOIN = "join-token-for-tests"
HF_SECRET = "hf_unit_secret_4f1c"
REPO = "rbee-test/unit-GGUF"
NAME = f"{REPO}:Q4_K_M"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_model(tmp_path_factory.mktemp("unitmodel") / "m.gguf").read_bytes()


@pytest.fixture(scope="module")
def hub(model_bytes: bytes) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo(REPO, {"m-Q4_K_M.gguf": model_bytes})
        hub.add_repo("rbee-test/gated-unit-GGUF", {"m-Q4_K_M.gguf": model_bytes}, gated_token=HF_SECRET)
        hub.add_repo("rbee-test/huge-unit-GGUF", [HubFile("m-Q4_K_M.gguf", model_bytes, advertised_size=10**15)])
        yield hub


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)  # only the endpoint in the request leads to the fake hub
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("RBEE_MODELS_DIR", str(tmp_path / "models"))
    config = HiveConfig(alias="unit", queen_url="http://127.0.0.1:9", token=JOIN, address="127.0.0.1")
    app = create_app(config, Hive("unit", state=tmp_path / "state"))  # lifespan not run: no queen link
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hive",
                                 headers={"Authorization": f"Bearer {JOIN}"}) as c:
        yield c
    await app.state.jobs.close()


async def events(client: httpx.AsyncClient, job_id: str) -> list[dict[str, object]]:
    resp = await client.get(f"/v1/hive/jobs/{job_id}/events")
    assert resp.status_code == 200
    return [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")]


async def pull(client: httpx.AsyncClient, hub: FakeHub, model: str,
               token: str | None = None) -> list[dict[str, object]]:
    body = HivePull(model=model, hf_endpoint=hub.url, hf_token=token).model_dump_json()
    resp = await client.post("/v1/hive/pulls", content=body)
    assert resp.status_code == 201, resp.text
    return await events(client, resp.json()["job_id"])


async def test_a_pull_uses_the_hub_it_was_given_then_info_and_rm_work(
    client: httpx.AsyncClient, hub: FakeHub, tmp_path: Path, model_bytes: bytes
) -> None:
    got = await pull(client, hub, NAME)
    assert got[-1]["type"] == "done", got[-1]
    assert got[-1]["data"]["name"] == NAME  # type: ignore[index]
    assert (tmp_path / "models" / REPO / "m-Q4_K_M.gguf").read_bytes() == model_bytes
    assert any(e.get("unit") == "bytes" and e.get("current") == len(model_bytes) for e in got)

    report = (await client.get("/v1/hive/report")).json()
    assert [m["name"] for m in report["models"]] == [NAME] and report["models_free_bytes"] > 0

    detail = await client.get(f"/v1/hive/models/{quote(NAME, safe='')}?ctx=256&slots=2")
    assert detail.status_code == 200, detail.text
    assert detail.json()["hive"] == "unit" and detail.json()["memory"]["context_per_slot"] == 256
    assert (await client.get(f"/v1/hive/models/{quote(NAME, safe='')}?ctx=0")).status_code == 400

    removed = await client.delete(f"/v1/hive/models/{quote(NAME, safe='')}")
    assert removed.status_code == 200 and removed.json()["name"] == NAME
    assert not (tmp_path / "models" / REPO / "m-Q4_K_M.gguf").exists()
    gone = await client.get(f"/v1/hive/models/{quote(NAME, safe='')}")
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == (f"The model '{NAME}' does not exist on hive 'unit'; pull it first: "
                                               f"rbee model pull {NAME} -a unit")
    assert (await client.delete(f"/v1/hive/models/{quote(NAME, safe='')}")).status_code == 404


async def test_a_gated_repo_needs_the_token_sent_with_the_job_and_it_is_kept_nowhere(
    client: httpx.AsyncClient, hub: FakeHub, tmp_path: Path
) -> None:
    refused = await pull(client, hub, "rbee-test/gated-unit-GGUF:Q4_K_M")
    assert refused[-1]["type"] == "error" and "gated" in str(refused[-1]["message"])
    got = await pull(client, hub, "rbee-test/gated-unit-GGUF:Q4_K_M", token=HF_SECRET)
    assert got[-1]["type"] == "done", got[-1]
    assert HF_SECRET not in json.dumps(got)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and HF_SECRET.encode() in p.read_bytes()]
    assert written == []


async def test_not_enough_disk_is_refused_with_this_hives_numbers(client: httpx.AsyncClient, hub: FakeHub,
                                                                  tmp_path: Path) -> None:
    got = await pull(client, hub, "rbee-test/huge-unit-GGUF:Q4_K_M")
    message = str(got[-1]["message"])
    assert got[-1]["type"] == "error" and "not enough disk space" in message
    assert "hive 'unit'" in message and str(tmp_path / "models") in message
    assert not [r for r in hub.requests if "huge-unit-GGUF/resolve" in r[1]]


async def test_bad_requests_and_a_wrong_join_token(client: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/v1/hive/pulls"), ("GET", "/v1/hive/jobs/job-0123456789ab/events"),
                         ("DELETE", "/v1/hive/jobs/job-0123456789ab"), ("GET", "/v1/hive/models/x"),
                         ("DELETE", "/v1/hive/models/x")):
        for auth in ("Bearer wrong", ""):
            resp = await client.request(method, path, headers={"Authorization": auth}, content=b"{}")
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_token"
    assert (await client.get("/v1/hive/jobs/job-0123456789ab/events")).status_code == 404
    assert (await client.delete("/v1/hive/jobs/nope")).status_code == 404
    assert (await client.post("/v1/hive/pulls", content=b'{"model": ""}')).status_code == 400
    bad_endpoint = await client.post("/v1/hive/pulls", content=b'{"model": "a/b", "hf_endpoint": "file:///etc"}')
    assert bad_endpoint.status_code == 400


def test_the_token_is_masked_everywhere_but_the_wire() -> None:
    asked = HivePull(model="a/b", hf_token=HF_SECRET)
    assert HF_SECRET not in repr(asked) and HF_SECRET not in str(asked)
    assert json.loads(asked.model_dump_json())["hf_token"] == HF_SECRET
    assert HF_SECRET not in repr(downloads.Hub(endpoint="http://x", token=HF_SECRET))


def test_a_hives_own_hf_endpoint_wins_over_the_queens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert downloads.Hub.for_job("http://queen-mirror", "t") == downloads.Hub("http://queen-mirror", "t")
    monkeypatch.setenv("HF_ENDPOINT", "http://own-mirror")
    assert downloads.Hub.for_job("http://queen-mirror", None) == downloads.Hub(None, None)
