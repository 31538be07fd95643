"""A hostile hive with a real join token, speaking the real protocol to a real queen (issue 17, findings 1,
2, 5 and 6): what it reports is bounded and checked, and nothing it says turns the queen against itself."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from rbee.common import upstream_wire
from tests.conftest import Queen

MODEL = {"name": "tiny", "path": "/m/tiny.gguf", "size_bytes": 1, "added_at": 0.0}


@pytest.fixture
def queen(make_queen: Callable[..., Queen]) -> Iterator[Queen]:
    yield make_queen(RBEE_LOCAL_HIVE="0", RBEE_HIVE_TIMEOUT_MS="60000").start()


def enrol(queen: Queen, alias: str = "evil") -> str:
    resp = httpx.post(f"{queen.url}/v1/hives", json={"alias": alias}, timeout=10)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["token"])


def worker(url: str, worker_id: str = "evil-w1", **info: Any) -> dict[str, Any]:
    return {"info": {"id": worker_id, "model": "tiny", "hive": "evil", "state": "ready", "url": url, "slots": 8,
                     "context_size": 512, "started_at": 1.0, **info},
            "api_key": "k", "entry": MODEL}


def report(*workers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"alias": "evil", "version": "0.1.0", "address": "127.0.0.1", "port": 1, "engine": {"path": None},
            "devices": [{"id": "cpu", "name": "CPU", "total_bytes": 10**9}], "memory_total": 10**9,
            "models": [MODEL], "workers": list(workers), **fields}


def register(queen: Queen, token: str, body: dict[str, Any] | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{queen.url}/v1/hives/register", content=content, timeout=30,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def still_serving(queen: Queen) -> None:
    assert queen.proc is not None and queen.proc.poll() is None, "the queen died"
    assert httpx.get(f"{queen.url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{queen.url}/v1/hives", timeout=10).status_code == 200
    assert httpx.get(f"{queen.url}/metrics", timeout=30).status_code == 200


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/v1/admin/shutdown?",
    "http://127.0.0.1:{port}/v1/hives/other#",
    "https://own:1@127.0.0.1:{port}",
])
def test_a_worker_url_with_a_path_of_the_hives_choosing_is_refused(queen: Queen, url: str) -> None:
    token = enrol(queen)
    resp = register(queen, token, report(worker(url.format(port=queen.port))))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "workers"
    assert "not on its own address" in resp.json()["error"]["message"]
    still_serving(queen)
    assert "refused a report under the token of hive 'evil' from 127.0.0.1" in queen.log.read_text()


def test_a_worker_that_leads_back_to_the_queen_ends_after_one_hop(queen: Queen) -> None:
    token = enrol(queen)
    assert register(queen, token, report(worker(f"http://127.0.0.1:{queen.port}"))).status_code == 200
    fds = len(os.listdir(f"/proc/{queen.proc.pid}/fd")) if queen.proc else 0
    resp = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60, headers={"x-rbee-hive": "evil"},
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    # not a recursion through itself (thousands of connections), not an answer: one hop, refused
    assert resp.status_code == 508 and "X-Rbee-Hop" in resp.json()["error"]["message"], resp.text
    still_serving(queen)  # the scrape of that "worker" ends after one hop too
    assert queen.proc is not None and len(os.listdir(f"/proc/{queen.proc.pid}/fd")) < fds + 50
    direct = httpx.post(f"{queen.url}/v1/admin/shutdown", timeout=10, headers={"X-Rbee-Hop": "queen"})
    assert direct.status_code == 508 and direct.json()["error"]["code"] == "loop_detected"
    still_serving(queen)


@pytest.mark.parametrize("worker_id", ["../../admin/shutdown", "evil-w1/../../../v1/admin/shutdown", "evil-w1?x=1"])
def test_worker_ids_that_climb_a_path_are_refused(queen: Queen, worker_id: str) -> None:
    token = enrol(queen)
    resp = register(queen, token, report(worker("http://127.0.0.1:4000", worker_id=worker_id)))
    assert resp.status_code == 400 and "workers" in resp.json()["error"]["param"]
    still_serving(queen)


def test_an_address_the_report_did_not_come_from_is_refused(queen: Queen) -> None:
    token = enrol(queen)
    resp = register(queen, token, report(address="10.231.0.99"))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "hive_report_refused"
    assert "came from 127.0.0.1" in resp.json()["error"]["message"]
    assert "evil" not in {h["alias"]: h["state"] for h in httpx.get(f"{queen.url}/v1/hives").json()
                          if h["state"] == "ready"}


def test_a_token_is_bound_to_the_address_the_installer_recorded(queen: Queen) -> None:
    resp = httpx.post(f"{queen.url}/v1/hives", json={"alias": "evil", "address": "10.231.0.12"}, timeout=10)
    token = resp.json()["token"]
    refused = register(queen, token, report())  # the right alias, from another machine
    assert refused.status_code == 403 and "issued for 10.231.0.12" in refused.json()["error"]["message"]


def test_workers_and_models_the_hive_does_not_hold_are_refused(queen: Queen) -> None:
    token = enrol(queen)
    other = worker("http://127.0.0.1:4000", worker_id="localhost-w1", hive="localhost")
    assert register(queen, token, report(other)).status_code == 400
    unlisted = {**worker("http://127.0.0.1:4000"), "entry": {**MODEL, "path": "/etc/shadow"}}
    resp = register(queen, token, report(unlisted))
    assert resp.status_code == 400 and "not in its catalog" in resp.json()["error"]["message"]


def test_a_reported_start_time_does_not_win_the_tie_break(queen: Queen) -> None:
    token = enrol(queen)
    assert register(queen, token, report(worker("http://127.0.0.1:4000", started_at=0.0))).status_code == 200
    (listed,) = httpx.get(f"{queen.url}/v1/workers", timeout=10).json()
    assert listed["started_at"] > 1.0  # the queen's own clock: when it first heard of the worker
    audit = httpx.get(f"{queen.url}/v1/audit", params={"action": "hive.register"}, timeout=10).json()
    assert [(e["actor"], e["source"]) for e in audit] == [("hive:evil", "127.0.0.1")]
    assert "adopted: evil-w1" in audit[0]["detail"]


@pytest.mark.parametrize("body", [
    report(devices=[{"id": "cpu", "name": "CPU", "total_bytes": 1, "utilization": math.nan}]),
    report(memory_total=10**400),
    report(devices=[{"id": "cpu", "name": "x" * 100_000, "total_bytes": 1}]),
    report(*[worker("http://127.0.0.1:4000", worker_id=f"evil-w{i}") for i in range(2500)]),
])
def test_reports_out_of_bounds_are_400s_and_everything_still_answers(queen: Queen, body: dict[str, Any]) -> None:
    token = enrol(queen)
    resp = register(queen, token, json.dumps(body))  # NaN and 400-digit integers as a hive's JSON encoder sends them
    assert resp.status_code == 400, resp.text
    still_serving(queen)


class _Worker(BaseHTTPRequestHandler):
    """A worker that answers one chat completion and keeps the headers the queen sent it."""

    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        _Worker.seen.append(dict(self.headers))
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "ok"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_queens_own_requests_say_so_and_carry_what_is_left_of_the_deadline(queen: Queen) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = enrol(queen)
        assert register(queen, token, report(worker(f"http://127.0.0.1:{server.server_address[1]}"))).status_code == 200
        resp = httpx.post(f"{queen.url}/v1/chat/completions", timeout=60,
                          headers={"x-rbee-hive": "evil", "X-Rbee-Timeout": "30"},
                          json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
    finally:
        server.shutdown()
    (sent,) = _Worker.seen
    assert sent["X-Rbee-Hop"] == "queen"  # a queen would refuse it: never taken for a client
    assert 0 < float(sent["X-Rbee-Timeout"]) <= 30
    assert sent["Authorization"] == "Bearer k"  # the worker's own key, nothing of the client's


def test_a_certificate_to_pin_must_be_one(queen: Queen) -> None:
    for junk in ("junk", "-----BEGIN CERTIFICATE-----\né\n-----END CERTIFICATE-----"):
        resp = httpx.post(f"{queen.url}/v1/hives", json={"alias": "evil", "certificate": junk}, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "certificate", resp.text
    enrol(queen)
    resp = httpx.put(f"{queen.url}/v1/hives/evil/certificate", json={"certificate": "junk"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "certificate"
    gone = httpx.put(f"{queen.url}/v1/hives/nobody/certificate", json={"certificate": "junk"}, timeout=10)
    assert gone.status_code == 400  # checked before the hive is looked up: nothing to learn from it


def heartbeat(queen: Queen, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{queen.url}/v1/hives/heartbeat", content=json.dumps(body), timeout=30,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def listed(queen: Queen) -> tuple[str, str | None, str | None]:
    (only,) = httpx.get(f"{queen.url}/v1/workers", timeout=10).json()
    return only["state"], only["url"], only["error"]


def test_a_hive_cannot_move_its_workers_where_a_worker_cannot_go(queen: Queen) -> None:
    """The worker state machine holds for a remote hive's workers: a report that moves one backwards or out of
    a terminal state changes nothing of the queen's view of it, and is logged."""
    token = enrol(queen)
    assert register(queen, token, report(worker("http://127.0.0.1:4000"))).status_code == 200
    assert listed(queen) == ("ready", "http://127.0.0.1:4000", None)
    back = {**worker("http://127.0.0.1:4001", state="starting"), "api_key": "other"}
    assert heartbeat(queen, token, report(back)).status_code == 200
    assert listed(queen) == ("ready", "http://127.0.0.1:4000", None)  # not taken back to starting, nor moved
    died = worker("http://127.0.0.1:4000", state="error", error="llama-server exited with code 1")
    assert heartbeat(queen, token, report(died)).status_code == 200
    assert listed(queen) == ("error", "http://127.0.0.1:4000", "llama-server exited with code 1")
    revived = worker("http://127.0.0.1:4002", state="ready")
    assert heartbeat(queen, token, report(revived)).status_code == 200
    assert listed(queen) == ("error", "http://127.0.0.1:4000", "llama-server exited with code 1")
    assert "worker evil-w1 as ready, but it is error here and a worker cannot go from error to ready" in \
        queen.log.read_text()
    unknown = heartbeat(queen, token, report(worker("http://127.0.0.1:4000", worker_id="evil-w2", state="downloading")))
    assert unknown.status_code == 400 and "state" in unknown.json()["error"]["message"], unknown.text
    still_serving(queen)


class _RawWorker(threading.Thread):
    """A worker that reads one request and answers with the bytes `answer` yields, until the queen hangs up."""

    def __init__(self, answer: Callable[[], Iterator[bytes]]) -> None:
        super().__init__(daemon=True)
        self._answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hung_up = threading.Event()

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            try:
                for part in self._answer():
                    conn.sendall(part)
            except OSError:
                pass
            self.hung_up.set()


def _endless_headers() -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\n"
    while True:
        yield b"X-Padding: " + b"p" * 4000 + b"\r\n"


def _bad_chunks() -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    yield b'1b\r\ndata: {"choices": []}\n\n\r\n'
    yield b"zz\r\nnot a chunk\r\n"


def _served_by(queen: Queen, raw: _RawWorker, stream: bool) -> httpx.Response:
    raw.start()
    token = enrol(queen)
    assert register(queen, token, report(worker(f"http://127.0.0.1:{raw.port}"))).status_code == 200
    return httpx.post(f"{queen.url}/v1/chat/completions", timeout=60, headers={"x-rbee-hive": "evil"},
                      json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": stream})


def test_a_worker_sending_endless_headers_is_cut_off_at_the_bound(queen: Queen) -> None:
    raw = _RawWorker(_endless_headers)
    resp = _served_by(queen, raw, stream=False)
    assert resp.status_code >= 400 and "error" in resp.json(), resp.text  # no other worker: an error, not a hang
    assert raw.hung_up.wait(30)  # the queen hung up: what it took is bounded (the kernel's buffers hold the rest)
    assert "worker evil-w1 failed before answering (BadAnswer(\"the peer's status line and headers are over " \
           f"{upstream_wire.MAX_HEAD_BYTES} bytes\"))" in queen.log.read_text()
    still_serving(queen)


def test_a_worker_breaking_its_chunked_stream_ends_it_with_an_error_event(queen: Queen) -> None:
    raw = _RawWorker(_bad_chunks)
    resp = _served_by(queen, raw, stream=True)
    assert resp.status_code == 200
    assert resp.text.startswith('data: {"choices": []}\n\n'), resp.text  # what came before is passed on as it was
    assert '"code": "worker_failed"' in resp.text or '"code":"worker_failed"' in resp.text, resp.text
    still_serving(queen)
