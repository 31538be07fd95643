"""The devices a hive lends to spreads (rbee/hive/rpc_servers.py) through its API: a real ggml-rpc-server per
(spread, device), on 127.0.0.1 only, with its cache under the hive's state folder, booked on the device, listed
in the report, accepted as a listen channel's target, stopped with its spread; what a token holder cannot do.
The hive runs in this process, called through ASGI with its join token as the queen calls it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.service import Hive
from tests.hive.test_rpc_channel import LAN, TOKEN

MIB = 2**20


class Lender:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.hive = Hive("helper", state=self.state, address=LAN or "127.0.0.1")
        self.app = create_app(HiveConfig(alias="helper", queen_url="http://127.0.0.1:9", token=TOKEN,
                                         address=LAN or "127.0.0.1"), self.hive)

    async def call(self, method: str, path: str, body: object = None, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hive",
                                     headers=headers, timeout=90) as client:
            content = body if isinstance(body, str) or body is None else json.dumps(body)
            return await client.request(method, path, content=content)

    async def lend(self, spread: str = "s1", memory: int = 64 * MIB, **extra: object) -> dict[str, object]:
        resp = await self.call("POST", "/v1/hive/rpc-servers", {"spread": spread, "device": "cpu", "memory": memory,
                                                                 **extra})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


@pytest.fixture
async def lender(tmp_path: Path, rpc_server: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lender]:
    monkeypatch.setenv("RBEE_RPC_SERVER", str(rpc_server))
    made = Lender(tmp_path)
    await made.hive.refresh_devices()
    yield made
    await made.hive.rpc_servers.stop_all()
    await made.hive.channels.close_all()


def _listeners(pid: int) -> list[tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN]


async def test_an_rpc_server_is_lent_on_loopback_with_its_cache_booked_listed_and_stopped(lender: Lender) -> None:
    lent = await lender.lend(memory=64 * MIB, host="0.0.0.0")  # a field it does not take: ignored, not obeyed
    port, pid = int(str(lent["port"])), int(str(lent["pid"]))
    assert lent["state"] == "ready" and _listeners(pid) == [("127.0.0.1", port)]
    proc = psutil.Process(pid)
    assert "-c" in proc.cmdline() and proc.environ()["LLAMA_CACHE"] == str(lender.state / "hive" / "rpc" / "cache")
    assert lender.hive.lent() == {"cpu": 64 * MIB}  # the helper's own workers see that much less room
    report = (await lender.hive.report(7835)).rpc_servers
    assert [(r.spread, r.port, r.memory) for r in report] == [("s1", port, 64 * MIB)]
    assert await lender.hive._channel_target(port)  # a listen channel end may relay to it: this hive started it
    stopped = await lender.call("DELETE", "/v1/hive/rpc-servers/s1")
    assert stopped.status_code == 200 and [s["state"] for s in stopped.json()] == ["stopped"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert lender.hive.lent() == {} and not (await lender.hive.report(7835)).rpc_servers


@pytest.mark.skipif(not LAN, reason="needs a LAN address to connect to")
async def test_the_rpc_server_is_not_reachable_on_the_hives_address(lender: Lender) -> None:
    port = int(str((await lender.lend())["port"]))
    with pytest.raises(OSError):
        socket.create_connection((LAN, port), timeout=5).close()


async def test_an_rpc_server_that_dies_is_marked_error_and_its_memory_is_free_again(lender: Lender) -> None:
    pid = int(str((await lender.lend())["pid"]))
    os.kill(pid, signal.SIGKILL)
    (server,) = lender.hive.rpc_servers.of("s1")
    await asyncio.wait_for(server.ended(), 30)
    (info,) = lender.hive.rpc_servers.infos()
    assert "exited with code" in (info.error or "") and lender.hive.lent() == {}


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"spread": "s1", "device": "cuda7"}, 400, "has no device 'cuda7'"),
    ({"spread": "../etc", "device": "cpu"}, 400, "Invalid value for 'spread'"),
    ({"spread": "s1", "device": "cpu", "memory": -1}, 400, "Invalid value for 'memory'"),
    ({"spread": "s1", "device": "cpu;rm"}, 400, "Invalid value for 'device'"),
    ("not json", 400, "Invalid value"),
])
async def test_bad_rpc_server_requests_get_a_clear_error(lender: Lender, body: object, status: int, words: str) -> None:
    resp = await lender.call("POST", "/v1/hive/rpc-servers", body)
    assert resp.status_code == status and words in resp.json()["error"]["message"], resp.text
    assert not lender.hive.rpc_servers.infos()


async def test_a_token_holder_gets_one_rpc_server_per_spread_and_device_and_none_without_the_token(
        lender: Lender) -> None:
    assert (await lender.call("POST", "/v1/hive/rpc-servers", {"spread": "s1"}, token=None)).status_code == 401
    assert (await lender.call("DELETE", "/v1/hive/rpc-servers/s1", token="wrong")).status_code == 401
    await lender.lend()
    twice = await lender.call("POST", "/v1/hive/rpc-servers", {"spread": "s1", "device": "cpu"})
    assert twice.status_code == 409 and "already" in twice.json()["error"]["message"]
    bad = await lender.call("DELETE", "/v1/hive/rpc-servers/..%2F..")
    assert bad.status_code in (400, 404) and len(lender.hive.rpc_servers.infos()) == 1
    assert (await lender.call("DELETE", "/v1/hive/rpc-servers/other")).json() == []  # nothing of another spread


@pytest.mark.parametrize(("spread", "words"), [
    ({"rpc": ["10.0.0.5:50052"], "tensor_split": [1.0], "gpu_layers": 9}, "is not 127.0.0.1:PORT"),
    ({"rpc": ["127.0.0.1:99999"], "tensor_split": [1.0], "gpu_layers": 9}, "is not 127.0.0.1:PORT"),
    ({"rpc": ["127.0.0.1:4000"], "tensor_split": [0.0], "gpu_layers": 9}, "add up to more than 0"),
    ({"rpc": [], "tensor_split": [1.0], "gpu_layers": 9}, "Invalid value for 'spread.rpc'"),
])
async def test_a_spread_worker_reaches_rpc_servers_on_loopback_only(lender: Lender, spread: dict[str, object],
                                                                    words: str) -> None:
    """A token holder cannot make llama-server send a model's tensors (or take its layers' work) elsewhere."""
    resp = await lender.call("POST", "/v1/hive/workers", {"model": "tiny", "spread": spread})
    assert resp.status_code == 400 and words in resp.json()["error"]["message"], resp.text
    assert not lender.hive.supervisor.workers()
