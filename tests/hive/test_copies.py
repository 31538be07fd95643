"""Hive-to-hive copies, both sides (rbee/hive/shares.py, rbee/hive/peer_fetch.py), in-process.

The source hive A really listens on 127.0.0.1 (uvicorn), because the target B fetches from it with its own
HTTP client; B is called through an ASGI transport, as the queen would. The attacks on the share endpoint
come from a third "host" (another client address on the ASGI transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee.contracts.copies import HiveFetch, ShareFile, ShareOpen, ShareOpened
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.downloads import sha256_of
from rbee.hive.service import Hive
from tests.fixtures.tiny_gguf import write_tiny_model

JOIN_A, JOIN_B = "join-token-of-hive-a", "join-token-of-hive-b"


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the kernel's queue until uvicorn accepts: nothing to poll for
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.models = tmp / "models"  # one process: both hives have this models folder (B writes there)
        self.a_app = create_app(HiveConfig(alias="a", queen_url="http://127.0.0.1:9", token=JOIN_A,
                                           address="127.0.0.1"), Hive("a", state=tmp / "state-a"))
        self.b = Hive("b", state=tmp / "state-b")
        self.b_app = create_app(HiveConfig(alias="b", queen_url="http://127.0.0.1:9", token=JOIN_B,
                                           address="127.0.0.1"), self.b)
        self.a: Hive = self.a_app.state.hive
        self.url = ""

    def client(self, app: Starlette, token: str | None, peer: str = "127.0.0.1") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 40000)),
                                 base_url="http://hive", headers=headers)

    async def share(self, model: str, peer: str = "127.0.0.1") -> ShareOpened:
        async with self.client(self.a_app, JOIN_A) as a:
            resp = await a.post("/v1/hive/shares", content=ShareOpen(model=model, peer_address=peer)
                                .model_dump_json())
        assert resp.status_code == 201, resp.text
        return ShareOpened.model_validate_json(resp.content)

    async def fetch(self, asked: HiveFetch) -> list[dict[str, object]]:
        async with self.client(self.b_app, JOIN_B) as b:
            resp = await b.post("/v1/hive/fetches", content=asked.model_dump_json())
            assert resp.status_code == 201, resp.text
            got = await b.get(f"/v1/hive/jobs/{resp.json()['job_id']}/events")
        return [json.loads(line[5:]) for line in got.text.splitlines() if line.startswith("data:")]

    def asked(self, share: ShareOpened, url: str | None = None, **update: object) -> HiveFetch:
        return HiveFetch(source="a", source_url=url or self.url, share_id=share.share_id, token=share.token,
                         entry=share.entry, files=share.files).model_copy(update=update)


@pytest.fixture
async def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fleet]:
    monkeypatch.setenv("RBEE_MODELS_DIR", str(tmp_path / "models"))
    fleet = Fleet(tmp_path)
    model = write_tiny_model(tmp_path / "added" / "tiny.gguf")  # added by path: outside the models folder
    await fleet.a.catalog.add_file(model, "tiny")
    async with serving(fleet.a_app) as url:
        fleet.url = url
        yield fleet
    await fleet.a_app.state.jobs.close()
    await fleet.b_app.state.jobs.close()


def partials(fleet: Fleet) -> list[Path]:
    return [p for p in (fleet.models / ".partial").rglob("*") if p.is_file()]


async def test_a_model_added_by_path_is_copied_checked_and_catalogued(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    source = fleet.tmp / "added" / "tiny.gguf"
    assert [f.sha256 for f in share.files] == [sha256_of(source)]  # hashed on A: the catalog had none
    got = await fleet.fetch(fleet.asked(share))
    assert got[-1]["type"] == "done", got[-1]
    copied = fleet.models / "copies" / "tiny" / "tiny.gguf"
    assert copied.read_bytes() == source.read_bytes()
    assert any(e.get("unit") == "bytes" and e.get("current") == source.stat().st_size for e in got)
    assert "over the LAN" in str(got[-2]["message"])
    entry = await fleet.b.catalog.get("tiny")
    assert entry is not None and entry.path == str(copied) and entry.source == "copy"
    assert partials(fleet) == []
    await fleet.b.remove("tiny")  # a copy is rbee's: removing it deletes the file
    assert not copied.exists() and source.exists()


async def test_share_endpoint_attacks(fleet: Fleet) -> None:
    share, other = await fleet.share("tiny"), await fleet.share("tiny", peer="127.0.0.2")
    path = f"/v1/hive/shares/{share.share_id}/files/0"
    token = share.token.get_secret_value()
    async with fleet.client(fleet.a_app, token) as b, fleet.client(fleet.a_app, None, "10.0.0.66") as third:
        ranged = await b.get(path, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and len(ranged.content) == 10
        assert ranged.headers["content-range"].startswith("bytes 10-19/")
        for auth in ("", "Bearer wrong-token-wrong-token", f"Bearer {JOIN_A}"):  # not even the join token
            refused = await third.get(path, headers={"Authorization": auth} if auth else {})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
        assert (await third.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 403
        assert (await b.get(f"/v1/hive/shares/{other.share_id}/files/0")).status_code == 401  # another share
        assert (await b.get(f"/v1/hive/shares/{share.share_id}/files/1")).status_code == 404
        for climb in (f"/v1/hive/shares/{share.share_id}/files/..%2F..%2Freport", "/v1/hive/report",
                      f"/v1/hive/shares/{share.share_id}/files/0/..", "/v1/hive/shares"):
            assert (await b.get(climb)).status_code == 401, climb  # the join token's routes stay closed
        assert (await b.post("/v1/hive/shares", content=b"{}")).status_code == 401


async def test_a_downloaded_model_outside_the_models_folder_is_not_shared(fleet: Fleet) -> None:
    entry = await fleet.a.catalog.get("tiny")
    assert entry is not None
    await fleet.a.catalog.add(entry.model_copy(update={"name": "elsewhere", "source": "hf"}))
    async with fleet.client(fleet.a_app, JOIN_A) as a:
        resp = await a.post("/v1/hive/shares", content=ShareOpen(model="elsewhere", peer_address="127.0.0.1")
                            .model_dump_json())
    assert resp.status_code == 409 and "outside this hive's models folder" in resp.json()["error"]["message"]


def corrupt_peer(data: bytes, served: list[str | None], on_serve: object = None) -> Starlette:
    """A peer that answers every share file with `data` (a byte flipped, say), recording Range headers."""
    async def file(request: Request) -> Response:
        served.append(request.headers.get("range"))
        if callable(on_serve):
            on_serve()

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1 << 16):
                yield data[start:start + (1 << 16)]
                await asyncio.sleep(0)
        return StreamingResponse(body(), media_type="application/octet-stream")
    return Starlette(routes=[Route("/v1/hive/shares/{sid}/files/{i}", file)])


async def test_a_corrupted_byte_is_refused_and_nothing_is_kept(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    good = (fleet.tmp / "added" / "tiny.gguf").read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    served: list[str | None] = []
    async with serving(corrupt_peer(bytes(bad), served)) as url:
        got = await fleet.fetch(fleet.asked(share, url))
    assert got[-1]["type"] == "error" and "sha256" in str(got[-1]["message"]) and "deleted" in str(got[-1]["message"])
    assert served == [None] and partials(fleet) == [] and await fleet.b.catalog.get("tiny") is None
    assert not (fleet.models / "copies").exists()


async def test_a_peer_naming_a_path_outside_the_models_folder_is_refused(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    for name in ("../../escaped.gguf", "/etc/rbee-escaped.gguf", "copies/../../x.gguf", ".partial/escaped.gguf"):
        lying = [ShareFile(name=name, size=share.files[0].size, sha256=share.files[0].sha256)]
        got = await fleet.fetch(fleet.asked(share, files=lying))
        assert got[-1]["type"] == "error" and "outside the models folder" in str(got[-1]["message"]), name
    assert not list(fleet.tmp.rglob("*escaped*")) and await fleet.b.catalog.get("tiny") is None


async def test_a_partial_copy_resumes_with_range(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    good = (fleet.tmp / "added" / "tiny.gguf").read_bytes()
    part = fleet.models / ".partial" / f"peer-{share.share_id}" / share.files[0].name
    part.parent.mkdir(parents=True)
    part.write_bytes(good[:1000])
    got = await fleet.fetch(fleet.asked(share))
    assert got[-1]["type"] == "done", got[-1]
    assert (fleet.models / share.files[0].name).read_bytes() == good


async def test_two_copies_of_one_model_at_once_download_once(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    good = (fleet.tmp / "added" / "tiny.gguf").read_bytes()
    served: list[str | None] = []
    async with serving(corrupt_peer(good, served)) as url:
        first, second = await asyncio.gather(fleet.fetch(fleet.asked(share, url)), fleet.fetch(fleet.asked(share, url)))
    assert first[-1]["type"] == second[-1]["type"] == "done"
    assert len(served) == 1  # the second waited for the first and found the model there
    assert "already on b" in str(second[-2]["message"]) or "already on b" in str(first[-2]["message"])


async def test_not_enough_disk_is_refused_up_front(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    huge = [ShareFile(name=share.files[0].name, size=10**15, sha256=share.files[0].sha256)]
    got = await fleet.fetch(fleet.asked(share, files=huge))
    assert got[-1]["type"] == "error" and "not enough disk space" in str(got[-1]["message"])
    assert "hive 'b'" in str(got[-1]["message"])


@pytest.fixture
def small_disk(tmp_path: Path) -> AsyncIterator[Path]:
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


async def test_a_disk_that_fills_during_the_copy_leaves_nothing(fleet: Fleet, small_disk: Path) -> None:
    share = await fleet.share("tiny")
    good = (fleet.tmp / "added" / "tiny.gguf").read_bytes()
    assert len(good) < 700_000, "the tiny model must fit the 1 MiB tmpfs"
    filler = small_disk / "someone-else.bin"

    def fill() -> None:  # another program takes the room once the copy has started
        filler.write_bytes(b"\0" * (1024 * 1024 - len(good) // 2 - 64 * 1024))

    served: list[str | None] = []
    async with serving(corrupt_peer(good, served, on_serve=fill)) as url:
        got = await fleet.fetch(fleet.asked(share, url))
    message = str(got[-1]["message"])
    assert got[-1]["type"] == "error" and "filled up" in message and "nothing else changed" in message, message
    assert sorted(p.name for p in small_disk.rglob("*") if p.is_file()) == ["someone-else.bin"]
    assert await fleet.b.catalog.get("tiny") is None


async def test_a_cut_connection_is_resumed_with_range_from_where_it_stopped(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    good = (fleet.tmp / "added" / "tiny.gguf").read_bytes()
    ranges: list[str | None] = []
    half = len(good) // 2

    async def file(request: Request) -> Response:
        asked = request.headers.get("range")
        ranges.append(asked)
        start = int(asked[6:-1]) if asked else 0

        async def body() -> AsyncIterator[bytes]:
            yield good[start:half] if not asked else good[start:]
            if not asked:
                raise ConnectionResetError("cut")  # the link drops mid-file
        return StreamingResponse(body(), status_code=206 if asked else 200)

    async with serving(Starlette(routes=[Route("/v1/hive/shares/{sid}/files/{i}", file)])) as url:
        got = await fleet.fetch(fleet.asked(share, url))
    assert got[-1]["type"] == "done", got[-1]
    assert ranges == [None, f"bytes={half}-"]
    assert (fleet.models / share.files[0].name).read_bytes() == good


async def test_a_copy_never_replaces_a_file_already_on_the_hive(fleet: Fleet) -> None:
    share = await fleet.share("tiny")
    other = fleet.models / share.files[0].name  # another model's file under the same name
    other.parent.mkdir(parents=True)
    other.write_bytes(b"someone else's model")
    got = await fleet.fetch(fleet.asked(share))
    assert got[-1]["type"] == "error" and "is not replaced" in str(got[-1]["message"])
    assert other.read_bytes() == b"someone else's model" and partials(fleet) == []


async def test_a_share_of_the_queens_own_hive_is_read_at_this_hives_queen_url_without_the_hop_header(
        fleet: Fleet) -> None:
    seen: list[httpx.Headers] = []
    a_app = fleet.a_app

    async def queen(scope: Scope, receive: Receive, send: Send) -> None:  # stands for the queen: A's share route
        if scope["type"] == "http":
            seen.append(httpx.Headers([(k.decode(), v.decode()) for k, v in scope["headers"]]))
        await a_app(scope, receive, send)

    share = await fleet.share("tiny")
    async with serving(queen) as queen_url:
        b_app = create_app(HiveConfig(alias="b", queen_url=queen_url + "/", token=JOIN_B, address="127.0.0.1"),
                           fleet.b)
        fleet.b_app = b_app
        got = await fleet.fetch(fleet.asked(share, url="http://127.0.0.1:9", from_queen=True))  # not this URL
        await b_app.state.jobs.close()
    assert got[-1]["type"] == "done", got[-1]
    assert (fleet.models / "copies" / "tiny" / "tiny.gguf").read_bytes() == \
        (fleet.tmp / "added" / "tiny.gguf").read_bytes()
    assert seen and all("x-rbee-hop" not in h for h in seen)  # a queen refuses its own hop header
