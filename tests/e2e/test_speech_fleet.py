"""Speech on a remote hive: whisper-server (no API key, no TLS of its own) listens on the hive's loopback, and
the hive serves it through its front (rbee/hive/front.py) on its own HTTPS port. A host in a network namespace
(tests/fixtures/lan.py) gets a hive by `rbee hive install` with the cluster CA; the queen runs no local hive.

The attacks come from the queen's machine, a peer on the LAN: it knows the hive's address and port, and in
the worst case holds a credential of another worker."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from rbee.common import tls
from rbee.hive import engine
from rbee.hive.engine_sources import WHISPER
from tests.conftest import Queen
from tests.e2e.test_audio import tone_wav
from tests.fixtures.fleet import installed_fleet
from tests.fixtures.lan import Lan, lan_hosts, model_every_host_reads
from tests.fixtures.tiny_gguf import write_tiny_model
from tests.fixtures.tiny_whisper import write_tiny_whisper

HIVE_PORT = 7835
# The setup waits for the machine's one LAN (other modules may hold it) and installs a hive over SSH.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(1, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


@pytest.fixture(scope="module")
def speech_model() -> Iterator[str]:
    with model_every_host_reads(lambda path: write_tiny_whisper(path.with_suffix(".bin")), "fleet-whisper") as path:
        yield path


@pytest.fixture(scope="module")
def text_model() -> Iterator[str]:
    with model_every_host_reads(lambda path: write_tiny_model(path, name="fleet-tiny"), "fleet-tiny") as path:
        yield path


@pytest.fixture(scope="module")
def fleet(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path,
          whisper_server: Path) -> Iterator[Queen]:
    h1 = lan.hosts[0]  # whisper-server is not shipped by `hive install`: put rbee's build where h1's hive looks
    there = h1.home / ".local" / "share" / "rbee" / "engines" / engine.build_id("cpu", WHISPER)
    (there / "bin").mkdir(parents=True)
    shutil.copy2(whisper_server, there / "bin" / WHISPER.binary)
    user = pwd.getpwnam(h1.user)
    for folder, _, files in os.walk(h1.home / ".local"):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(name, user.pw_uid, user.pw_gid)
    # one thread per worker, as every test runs them: two OpenMP threads on busy shared cores spin for minutes
    with installed_fleet(lan, tmp_path_factory.mktemp("keeper"), llama_server, tls=True,
                         hosts_extra={"h1": {"WorkerThreads": "1"}}) as queen:
        yield queen


@pytest.fixture(scope="module")
def pinned(fleet: Queen) -> ssl.SSLContext:
    return tls.client_context(fleet.home / "config" / "tls" / "ca.pem")


@pytest.fixture(scope="module")
def transcribed(fleet: Queen, pinned: ssl.SSLContext, speech_model: str, text_model: str) -> httpx.Response:
    """A transcription through the queen on h1, and a chat there (another worker, with a key of its own)."""
    url = f"https://127.0.0.1:{fleet.port}"
    chat = httpx.post(f"{url}/v1/chat/completions", verify=pinned, timeout=120, headers={"x-rbee-hive": "h1"},
                      json={"model": text_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert chat.status_code == 200, chat.text
    return httpx.post(f"{url}/v1/audio/transcriptions", verify=pinned, timeout=180, headers={"x-rbee-hive": "h1"},
                      data={"model": speech_model}, files={"file": ("a.wav", tone_wav(1.0))})


@pytest.fixture(scope="module")
def report(lan: Lan, pinned: ssl.SSLContext, transcribed: httpx.Response) -> dict[str, Any]:
    """What h1's hive tells its queen (with the join token): its workers and their keys."""
    token = next(line.split('"')[1] for line in lan.run("h1", "cat", ".config/rbee/hive.toml").stdout.splitlines()
                 if line.startswith("token"))
    got = httpx.get(f"https://{lan.hosts[0].address}:{HIVE_PORT}/v1/hive/report", verify=pinned,
                    headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert got.status_code == 200, got.text
    return {**got.json(), "token": token}


def worker(report: dict[str, Any], mode: str) -> dict[str, Any]:
    workers = report["workers"]
    assert isinstance(workers, list)
    return next(w for w in workers if w["info"]["mode"] == mode and w["info"]["state"] == "ready")


def front_request(lan: Lan, pinned: ssl.SSLContext, method: str, target: str, key: str | None,
                  body: bytes | Iterator[bytes] | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request with `target` sent as written (no client normalises its dots or escapes)."""
    conn = http.client.HTTPSConnection(lan.hosts[0].address, HIVE_PORT, context=pinned, timeout=60)
    try:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        conn.request(method, target, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_speech_worker_on_a_lan_hive_transcribes_through_the_queen_over_tls(
        fleet: Queen, lan: Lan, pinned: ssl.SSLContext, transcribed: httpx.Response) -> None:
    assert transcribed.status_code == 200, transcribed.text
    assert "rbee" in transcribed.json()["text"]
    assert transcribed.headers["x-rbee-hive"] == "h1"
    workers = httpx.get(f"https://127.0.0.1:{fleet.port}/v1/workers", verify=pinned, timeout=10).json()
    speech = next(w for w in workers if w["mode"] == "transcribe")
    assert speech["hive"] == "h1"
    assert speech["url"] == f"https://{lan.hosts[0].address}:{HIVE_PORT}/v1/workers/{speech['id']}/engine"
    text = next(w for w in workers if w["mode"] == "generate")  # llama-server keeps its own port, key and TLS
    assert text["url"].startswith(f"https://{lan.hosts[0].address}:") and "/engine" not in text["url"]


def test_whisper_server_listens_on_the_hives_loopback_only(lan: Lan, report: dict[str, Any]) -> None:
    uid = pwd.getpwnam(lan.hosts[0].user).pw_uid
    (argv,) = [p.cmdline() for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid
               and p.cmdline()[:1] and Path(p.cmdline()[0]).name == WHISPER.binary]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--threads") + 1] == "1"  # hives.conf's WorkerThreads reached the hive
    port = int(argv[argv.index("--port") + 1])
    with pytest.raises(ConnectionRefusedError):  # from the LAN, at the hive's address
        socket.create_connection((lan.hosts[0].address, port), timeout=5).close()
    probe = lan.run("h1", "bash", "-c", f"echo > /dev/tcp/{lan.hosts[0].address}/{port}")
    assert probe.returncode != 0  # not on the LAN address from the host itself either
    assert lan.run("h1", "bash", "-c", f"echo > /dev/tcp/127.0.0.1/{port}").returncode == 0  # but there it is


def test_the_front_takes_the_workers_key_or_the_join_token(lan: Lan, pinned: ssl.SSLContext,
                                                           report: dict[str, Any]) -> None:
    speech = worker(report, "transcribe")
    boundary = "rbee-front-test"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + tone_wav(0.5) + f"\r\n--{boundary}--\r\n".encode()
    target = f"/v1/workers/{speech['info']['id']}/engine/inference"
    for key in (speech["api_key"], report["token"]):
        status, body = front_request(lan, pinned, "POST", target, str(key), form,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 200, body
        assert "rbee" in json.loads(body)["text"]


@pytest.mark.parametrize("who", ["none", "wrong", "another worker's"])
def test_the_front_refuses_a_request_without_the_workers_own_key(lan: Lan, pinned: ssl.SSLContext,
                                                                 report: dict[str, Any], who: str) -> None:
    speech, text = worker(report, "transcribe"), worker(report, "generate")
    key = {"none": None, "wrong": "not-a-key", "another worker's": str(text["api_key"])}[who]
    status, body = front_request(lan, pinned, "GET", f"/v1/workers/{speech['info']['id']}/engine/", key)
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_a_worker_that_is_not_fronted_is_not_reached_through_the_front(lan: Lan, pinned: ssl.SSLContext,
                                                                       report: dict[str, Any]) -> None:
    text = worker(report, "generate")  # llama-server has its own key and TLS: the front serves it not
    for key in (str(text["api_key"]), str(report["token"])):
        status, body = front_request(lan, pinned, "GET", f"/v1/workers/{text['info']['id']}/engine/health", key)
        assert status == 404, body
    status, body = front_request(lan, pinned, "GET", "/v1/workers/h1-w999/engine/health", str(report["token"]))
    assert status == 404, body


@pytest.mark.parametrize("tail", ["/../../hive/report", "/%2e%2e/%2e%2e/hive/report", "/..", "/./inference",
                                  "//etc/passwd", "/http://127.0.0.1:22/", "/inference%00", "/a/../inference"])
def test_the_front_refuses_a_path_that_could_escape(lan: Lan, pinned: ssl.SSLContext, report: dict[str, Any],
                                                    tail: str) -> None:
    speech = worker(report, "transcribe")
    status, body = front_request(lan, pinned, "GET", f"/v1/workers/{speech['info']['id']}/engine{tail}",
                                 str(speech["api_key"]))
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "invalid_path"


def test_an_absolute_url_as_the_target_reaches_no_engine(lan: Lan, pinned: ssl.SSLContext,
                                                         report: dict[str, Any]) -> None:
    speech = worker(report, "transcribe")
    status, body = front_request(lan, pinned, "GET", "http://127.0.0.1:22/", str(speech["api_key"]))
    assert status == 401, body  # not a front path: the join token's routes, and a worker key is not it


def test_the_front_refuses_a_body_over_the_bound(lan: Lan, pinned: ssl.SSLContext,
                                                 report: dict[str, Any]) -> None:
    speech = worker(report, "transcribe")
    target = f"/v1/workers/{speech['info']['id']}/engine/inference"
    conn = http.client.HTTPSConnection(lan.hosts[0].address, HIVE_PORT, context=pinned, timeout=60)
    try:  # says 10 GB and sends nothing: the answer comes before any body
        conn.putrequest("POST", target)
        conn.putheader("Authorization", f"Bearer {speech['api_key']}")
        conn.putheader("Content-Length", str(10**10))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "too_large"
    finally:
        conn.close()
    chunks = (b"x" * 2**20 for _ in range(33))  # no length, 33 MiB: over RBEE_MAX_BODY_MB's 32
    status, body = front_request(lan, pinned, "POST", target, str(speech["api_key"]), chunks)
    assert status == 413, body
