"""The queen's record of a remote hive follows its heartbeats: adopt, update, drop, unreachable, back."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from rbee.contracts.hives import HiveReport, HiveState, HostedWorker, WorkerShape
from rbee.contracts.models import ModelEntry
from rbee.contracts.spreads import LentDevice, RpcServerInfo, RpcServerOpen
from rbee.contracts.status import EngineInfo
from rbee.contracts.workers import WorkerInfo, WorkerState
from rbee.queen.remote_hive import RemoteHive
from rbee.queen.remote_workers import RemoteWorker

ENTRY = ModelEntry.model_validate({"name": "tiny", "path": "/m/tiny.gguf", "size_bytes": 1, "source": "local",
                                   "added_at": 0.0})


def hosted(worker_id: str, state: WorkerState = WorkerState.READY) -> HostedWorker:
    info = WorkerInfo(id=worker_id, model="tiny", hive="h1", state=state, url="http://10.0.0.5:4000", slots=2,
                      context_size=512, started_at=1.0, memory_bytes=123)
    return HostedWorker(info=info, api_key="k", entry=ENTRY)


def report(*workers: HostedWorker) -> HiveReport:
    # nothing listens on 127.0.0.1:1, so the queen's calls to this hive fail at once
    return HiveReport(alias="h1", version="0.1.0", address="127.0.0.1", port=1, engine=EngineInfo(path="/e"),
                      devices=[], memory_total=10**9, workers=list(workers))


async def test_heartbeats_adopt_update_and_drop_workers() -> None:
    hive = RemoteHive(report(hosted("h1-w1")), "token")
    adopted = hive.supervisor.get("h1-w1")
    assert adopted is not None and adopted.state is WorkerState.READY and adopted.memory == 123
    hive.heard_from(report(hosted("h1-w1", WorkerState.ERROR)), "token")
    assert adopted.state is WorkerState.ERROR and adopted.failed_at is not None
    hive.heard_from(report(hosted("h1-w2")), "token")
    assert hive.supervisor.get("h1-w2") is not None
    assert hive.supervisor.get("h1-w1") is adopted  # failed workers stay listed for back-off
    hive.heard_from(report(), "token")
    assert hive.supervisor.get("h1-w2") is None
    await hive.close()


async def test_silence_marks_the_hive_and_its_workers_unreachable_until_it_reports_again() -> None:
    hive = RemoteHive(report(hosted("h1-w1")), "token")
    hive.last_seen -= 10
    hive.check_alive(timeout_s=5)
    worker = hive.supervisor.get("h1-w1")
    assert hive.state is HiveState.UNREACHABLE and worker is not None and worker.state is WorkerState.UNREACHABLE
    hive.heard_from(report(hosted("h1-w1")), "token")
    assert hive.state is HiveState.READY and worker.state is WorkerState.READY
    await hive.close()


class _Hive(BaseHTTPRequestHandler):
    """Answers the queen's DELETE /v1/hive/workers/ID as a hive does."""

    def do_DELETE(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


async def test_a_worker_stopped_by_the_queen_is_not_revived_by_a_stale_heartbeat() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hive = RemoteHive(report(hosted("h1-w1")).model_copy(update={"port": server.server_address[1]}), "token")
        stopped = await hive.supervisor.stop("h1-w1")
        assert stopped is not None and stopped.state is WorkerState.STOPPED
        stale = report(hosted("h1-w1")).model_copy(update={"port": server.server_address[1]})
        hive.heard_from(stale, "token")  # built before the hive stopped it
        assert hive.supervisor.get("h1-w1") is None
        await hive.close()
    finally:
        server.shutdown()


async def test_a_worker_the_hive_could_not_stop_is_adopted_again() -> None:
    hive = RemoteHive(report(hosted("h1-w1")), "token")
    await hive.supervisor.stop("h1-w1")  # nothing answers on 127.0.0.1:1: the worker may still run there
    hive.heard_from(report(hosted("h1-w1")), "token")
    assert hive.supervisor.get("h1-w1") is not None
    await hive.close()


async def test_a_spread_worker_on_a_remote_hive_holds_what_its_hive_says_on_each_gpu() -> None:
    spread = hosted("h1-w1")
    spread.info = WorkerInfo(**{**spread.info.model_dump(), "device": "cuda0+cuda1",
                                "device_memory": {"cuda0": 100, "cuda1": 23}})
    hive = RemoteHive(report(spread), "token")
    adopted = hive.supervisor.get("h1-w1")
    assert adopted is not None and adopted.held() == {"cuda0": 100, "cuda1": 23}
    assert adopted.info().device_memory == {"cuda0": 100, "cuda1": 23}
    # Before its hive answers, a worker being started there is counted in equal parts.
    starting = RemoteWorker("h1", worker_id="h1-starting", memory=10, placeholder=True)
    starting.device = "cuda0+cuda1"
    assert starting.held() == {"cuda0": 5, "cuda1": 5}


async def test_a_request_that_needs_a_larger_context_asks_the_hive_for_it() -> None:
    asked: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        need = 2000 if body["at_least"] else 1000  # as the hive estimates, with the context asked for
        return httpx.Response(200, json={"entry": ENTRY.model_dump(mode="json"), "need": need})

    hive = RemoteHive(report(), "token")
    await hive.client.http.aclose()
    hive.client.http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    assert await hive.need(ENTRY) == 1000
    assert await hive.need(ENTRY, WorkerShape(at_least=1024)) == 2000
    assert await hive.need(ENTRY, WorkerShape(at_least=1024)) == 2000  # asked once per shape
    assert [(a["model"], a["at_least"]) for a in asked] == [("tiny", None), ("tiny", 1024)]
    await hive.close()


LENT = RpcServerInfo(spread="s1", devices=[LentDevice(device="cuda0", memory=300), LentDevice(device="cuda1",
                                                                                          memory=200)],
                     port=4001, pid=77, state="ready")


class _Lender(BaseHTTPRequestHandler):
    """Answers POST /v1/hive/rpc-servers (one rpc-server lending two GPUs) and its DELETE, as a hive does."""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(201, LENT.model_dump_json().encode())

    def do_DELETE(self) -> None:
        self._answer(200, b"[]")

    def log_message(self, *args: object) -> None:
        pass


async def test_the_memory_an_rpc_server_books_counts_from_its_start_and_is_free_from_its_stop() -> None:
    """Not one heartbeat later: a plan made right after a spread stops (or starts) sees the room as it is."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lender)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hive = RemoteHive(report().model_copy(update={"port": server.server_address[1]}), "token")
        await hive.start_rpc_server(RpcServerOpen(spread="s1", devices=LENT.devices))
        assert hive.lent() == {"cuda0": 300, "cuda1": 200}
        await hive.stop_rpc_servers("s1")
        assert hive.lent() == {}
        await hive.close()
    finally:
        server.shutdown()
