"""The queen's own hive as a copy source (rbee/queen/share_routes.py, the guard's one opening for it).

The queen app is called in-process through an ASGI transport whose client address plays each host: the
target hive the share was opened for (10.0.0.2), a third host (10.0.0.66). The rules are a hive's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rbee.common import paths
from rbee.contracts.copies import ShareOpen, ShareOpened
from rbee.contracts.keys import KeyCreate
from rbee.hive.downloads import sha256_of
from rbee.hive.service import Hive
from rbee.queen.app import create_app
from rbee.queen.state import QueenState
from tests.fixtures.tiny_gguf import write_tiny_model

TARGET, THIRD = "10.0.0.2", "10.0.0.66"


@dataclass
class Queen:
    state: QueenState
    hive: Hive
    model: Path
    join: str

    def client(self, peer: str, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(self.state), client=(peer, 40000)),
                                 base_url="http://queen", headers=headers)

    async def share(self, peer: str = TARGET) -> ShareOpened:
        return await self.hive.open_share(ShareOpen(model="tiny", peer_address=peer))


@pytest.fixture
async def queen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Queen]:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RBEE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("RBEE_LOCAL_HIVE", raising=False)
    state = QueenState.create()
    hive = state.hives["localhost"]
    assert isinstance(hive, Hive)
    model = write_tiny_model(tmp_path / "added" / "tiny.gguf")
    await hive.catalog.add_file(model, "tiny")
    join = await state.db.enrol("h2", TARGET)
    yield Queen(state, hive, model, join)
    await state.jobs.close()


async def test_the_target_reads_the_queens_share_whole_and_by_range(queen: Queen) -> None:
    share = await queen.share()
    path = f"/v1/hive/shares/{share.share_id}/files/0"
    assert [f.sha256 for f in share.files] == [sha256_of(queen.model)]
    async with queen.client(TARGET, share.token.get_secret_value()) as target:
        whole = await target.get(path)
        assert whole.status_code == 200 and whole.content == queen.model.read_bytes()
        ranged = await target.get(path, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == queen.model.read_bytes()[10:20]
        assert (await target.head(path)).status_code == 200
        assert (await target.get(f"/v1/hive/shares/{share.share_id}/files/1")).status_code == 404


async def test_share_endpoint_attacks_on_the_queen(queen: Queen) -> None:
    share, other = await queen.share(), await queen.share()
    path = f"/v1/hive/shares/{share.share_id}/files/0"
    token = share.token.get_secret_value()
    admin = paths.admin_token_file().read_text().strip()
    created = await queen.state.keyring.create(KeyCreate(name="client"))  # the queen now requires keys
    async with queen.client(THIRD) as third, queen.client(TARGET, token) as target:
        for auth in ("", "Bearer wrong-token-wrong-token", f"Bearer {queen.join}", f"Bearer {created.secret}",
                     f"Bearer {admin}"):  # neither the join token, an API key nor even the admin token
            refused = await third.get(path, headers={"Authorization": auth} if auth else {})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token", auth
        assert (await third.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 403
        assert (await target.get(f"/v1/hive/shares/{other.share_id}/files/0")).status_code == 401  # another share
        with_body = await target.request("GET", path, content=b"x" * 10)
        assert with_body.status_code == 413
        hop = await target.get(path, headers={"X-Rbee-Hop": "queen"})
        assert hop.status_code == 508
        # the share's token opens nothing else of the queen, a climb out of the route included
        for climb in (f"/v1/hive/shares/{share.share_id}/files/..%2F..%2F..%2F..%2Fstatus",
                      f"/v1/hive/shares/{share.share_id}/files/0/..", f"/v1/hive/shares/{share.share_id}/files/00000",
                      "/v1/hive/shares", "/v1/status", "/v1/hives", "/v1/keys", "/v1/models", "/v1/workers",
                      "/metrics", "/v1/hive/report"):
            got = await target.get(climb)
            assert got.status_code in (401, 403, 404), (climb, got.status_code)
            assert got.status_code != 404 or "error" in got.json(), climb
        assert (await target.post("/v1/chat/completions", json={"model": "tiny", "messages": []})).status_code == 401
        assert (await target.get(path)).status_code == 200  # and the share itself still works, keys or not


async def test_no_share_without_the_embedded_hive(queen: Queen) -> None:
    share = await queen.share()
    del queen.state.hives["localhost"]  # RBEE_LOCAL_HIVE=0: nothing to serve
    async with queen.client(TARGET, share.token.get_secret_value()) as target:
        got = await target.get(f"/v1/hive/shares/{share.share_id}/files/0")
    assert got.status_code == 401
