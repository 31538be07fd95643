"""The devices a hive lends to spreads (rbee/hive/rpc_servers.py) through its API: a real ggml-rpc-server per
spread, lending each device asked (two simulated GPUs: one process, `-d CUDA0,CUDA1`), on 127.0.0.1 only, with
its cache under the hive's state folder, booked on each device, listed in the report, accepted as a listen
channel's target, stopped with its spread; what a token holder cannot do. The hive runs in this process, called
through ASGI with its join token as the queen calls it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig
from rbee.hive.service import Hive
from tests.fixtures.fake_gpu import FakeGPUs, fake_gpus
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
        resp = await self.call("POST", "/v1/hive/rpc-servers", {"spread": spread, "devices": [
            {"device": "cpu", "memory": memory}], **extra})
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
    assert [(r.spread, r.port, [(d.device, d.memory) for d in r.devices]) for r in report] == \
        [("s1", port, [("cpu", 64 * MIB)])]
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
    ({"spread": "s1", "devices": [{"device": "cuda7"}]}, 400, "has no device 'cuda7'"),
    ({"spread": "s1", "devices": [{"device": "cpu"}, {"device": "cuda7"}]}, 400, "has no device 'cuda7'"),
    ({"spread": "../etc", "devices": [{"device": "cpu"}]}, 400, "Invalid value for 'spread'"),
    ({"spread": "s1", "devices": [{"device": "cpu", "memory": -1}]}, 400, "Invalid value for 'devices.0.memory'"),
    ({"spread": "s1", "devices": [{"device": "cpu;rm"}]}, 400, "Invalid value for 'devices.0.device'"),
    ({"spread": "s1", "devices": []}, 400, "Invalid value for 'devices'"),
    ({"spread": "s1", "devices": [{"device": "cpu"}, {"device": "CPU"}]}, 400, "'cpu' is named twice"),
    ({"spread": "s1", "devices": [{"device": "cpu"}] * 17}, 400, "Invalid value for 'devices'"),
    ({"spread": "s1", "devices": [{"device": "cpu", "memory": 2**49}]}, 409, "has "),
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
    twice = await lender.call("POST", "/v1/hive/rpc-servers", {"spread": "s1", "devices": [{"device": "cpu"}]})
    assert twice.status_code == 409 and "already (lending cpu)" in twice.json()["error"]["message"]
    bad = await lender.call("DELETE", "/v1/hive/rpc-servers/..%2F..")
    assert bad.status_code in (400, 404) and len(lender.hive.rpc_servers.infos()) == 1
    assert (await lender.call("DELETE", "/v1/hive/rpc-servers/other")).json() == []  # nothing of another spread


@pytest.mark.parametrize(("spread", "words"), [
    ({"rpc": ["10.0.0.5:50052"], "tensor_split": [1.0], "gpu_layers": 9}, "is not 127.0.0.1:PORT"),
    ({"rpc": ["127.0.0.1:99999"], "tensor_split": [1.0], "gpu_layers": 9}, "is not 127.0.0.1:PORT"),
    ({"rpc": ["127.0.0.1:4000"], "tensor_split": [0.0], "gpu_layers": 9}, "add up to more than 0"),
    ({"rpc": [], "tensor_split": [1.0], "gpu_layers": 9}, "Invalid value for 'spread.rpc'"),
    ({"rpc": ["127.0.0.1:4000"], "rpc_devices": [0], "tensor_split": [1.0], "gpu_layers": 9}, "lends 1 to 16"),
    ({"rpc": ["127.0.0.1:4000"], "rpc_devices": [1, 1], "tensor_split": [1.0], "gpu_layers": 9},
     "gives 2 counts for 1 rpc-servers"),
])
async def test_a_spread_worker_reaches_rpc_servers_on_loopback_only(lender: Lender, spread: dict[str, object],
                                                                    words: str) -> None:
    """A token holder cannot make llama-server send a model's tensors (or take its layers' work) elsewhere."""
    resp = await lender.call("POST", "/v1/hive/workers", {"model": "tiny", "spread": spread})
    assert resp.status_code == 400 and words in resp.json()["error"]["message"], resp.text
    assert not lender.hive.supervisor.workers()


GIB = 2**30


@pytest.fixture
async def gpu_lender(tmp_path: Path, llama_server: Path, rpc_server: Path,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Lender, FakeGPUs]]:
    """A helper with two simulated CUDA GPUs (tests/fixtures/fake_gpu.py): its rpc-server is found beside its
    llama-server, as in rbee's builds."""
    gpus = fake_gpus(tmp_path / "gpus", llama_server)
    monkeypatch.delenv("RBEE_RPC_SERVER", raising=False)
    monkeypatch.setenv("RBEE_LLAMA_SERVER", str(gpus.engine))
    monkeypatch.setenv("PATH", f"{gpus.folder}:{os.environ['PATH']}")
    made = Lender(tmp_path)
    await made.hive.refresh_devices()
    assert [d.id for d in made.hive.devices()] == ["cuda0", "cuda1", "cpu"]
    yield made, gpus
    await made.hive.rpc_servers.stop_all()


async def test_one_rpc_server_lends_both_gpus_of_a_helper_each_booked_and_llama_server_sees_two_devices(
        gpu_lender: tuple[Lender, FakeGPUs], llama_server: Path) -> None:
    lender, gpus = gpu_lender
    resp = await lender.call("POST", "/v1/hive/rpc-servers", {"spread": "s2", "devices": [
        {"device": "cuda1", "memory": 2 * GIB}, {"device": "cuda0", "memory": 4 * GIB}]})
    assert resp.status_code == 201, resp.text
    lent = resp.json()
    port, pid = int(lent["port"]), int(lent["pid"])
    assert [(d["device"], d["memory"]) for d in lent["devices"]] == [("cuda1", 2 * GIB), ("cuda0", 4 * GIB)]
    assert gpus.rpc_devices() == ["CUDA1,CUDA0"]  # one process for both, in the order asked (the plan's)
    assert lender.hive.lent() == {"cuda0": 4 * GIB, "cuda1": 2 * GIB}
    assert _listeners(pid) == [("127.0.0.1", port)]
    listed = await asyncio.to_thread(subprocess.run, [str(llama_server), "--rpc", f"127.0.0.1:{port}",
                                                      "--list-devices"], capture_output=True, text=True, timeout=60)
    said = listed.stdout + listed.stderr
    assert f"RPC0: 127.0.0.1:{port}" in said and f"RPC1: 127.0.0.1:{port}" in said, said
    (report,) = (await lender.hive.report(7835)).rpc_servers
    assert [d.device for d in report.devices] == ["cuda1", "cuda0"] and report.state == "ready"
    stopped = await lender.call("DELETE", "/v1/hive/rpc-servers/s2")
    assert [s["state"] for s in stopped.json()] == ["stopped"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert lender.hive.lent() == {}


async def test_a_gpu_without_room_for_its_share_is_refused_by_name_and_nothing_starts(
        gpu_lender: tuple[Lender, FakeGPUs]) -> None:
    lender, gpus = gpu_lender
    first = await lender.call("POST", "/v1/hive/rpc-servers", {"spread": "s3", "devices": [
        {"device": "cuda0", "memory": 1 * GIB}]})
    assert first.status_code == 201, first.text
    total = next(d.total_bytes for d in lender.hive.devices() if d.id == "cuda0")
    resp = await lender.call("POST", "/v1/hive/rpc-servers", {"spread": "s4", "devices": [
        {"device": "cuda1", "memory": 1 * GIB}, {"device": "cuda0", "memory": total - GIB // 2}]})
    said = resp.json()["error"]
    assert resp.status_code == 409 and said["code"] == "no_room", resp.text
    assert "device 'cuda0' on hive 'helper' has" in said["message"] and "spread s4 asks" in said["message"]
    assert gpus.rpc_devices() == ["CUDA0"]  # the first spread's only
    assert [s.spread for s in lender.hive.rpc_servers.infos()] == ["s3"]
    assert lender.hive.lent() == {"cuda0": 1 * GIB}
