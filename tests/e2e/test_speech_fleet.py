"""Speech and images on a remote hive: whisper-server and sd-server (no API key, no TLS of their own) listen on
the hive's loopback, and the hive serves them through its front (rbee/hive/front.py) on its own HTTPS port. A host
in a network namespace (tests/fixtures/lan.py) gets a hive, and both engines, by `rbee hive install` with the
cluster CA; the queen runs no local hive.

The attacks come from the queen's machine, a peer on the LAN: it knows the hive's address and port, and in
the worst case holds a credential of another worker. The engines are killed and cut on the hive itself."""

from __future__ import annotations

import base64
import http.client
import json
import os
import pwd
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from rbee.common import tls
from rbee.hive import engine
from rbee.hive.engine_sources import SD, WHISPER
from tests.conftest import Queen, wait_for
from tests.e2e.test_audio import tone_wav
from tests.e2e.test_images import png_size
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
def image_model(tiny_sd: Path) -> Iterator[str]:
    """The generated image model (0.5 GB), linked where every host's user reads it (a copy across filesystems)."""
    def place(path: Path) -> Path:
        try:
            os.link(tiny_sd, path)
        except OSError:
            shutil.copyfile(tiny_sd, path)
        return path

    with model_every_host_reads(place, "fleet-sd") as path:
        yield path


@pytest.fixture(scope="module")
def fleet(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path, whisper_server: Path,
          sd_server: Path) -> Iterator[Queen]:
    """h1 installed by `rbee hive install`, which ships the speech and image engines built here."""
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
    return {**hive_report(lan, pinned), "token": hive_token(lan)}


def worker(report: dict[str, Any], mode: str) -> dict[str, Any]:
    workers = report["workers"]
    assert isinstance(workers, list)
    return next(w for w in workers if w["info"]["mode"] == mode and w["info"]["state"] == "ready")


def front_request(lan: Lan, pinned: ssl.SSLContext, method: str, target: str, key: str | None,
                  body: bytes | Iterator[bytes] | None = None,
                  headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """One request with `target` sent as written (no client normalises its dots or escapes)."""
    conn = http.client.HTTPSConnection(lan.hosts[0].address, HIVE_PORT, context=pinned, timeout=timeout)
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


def engines_on_h1(lan: Lan, binary: str) -> list[psutil.Process]:
    """The processes of `binary` that h1's user runs (the hive's engines)."""
    uid = pwd.getpwnam(lan.hosts[0].user).pw_uid
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if proc.info["uids"] and proc.info["uids"].real == uid and argv[:1] and Path(argv[0]).name == binary:
            found.append(proc)
    return found


def engine_port(proc: psutil.Process) -> int:
    argv = proc.cmdline()
    return int(argv[argv.index("--port" if "--port" in argv else "--listen-port") + 1])


def test_whisper_server_listens_on_the_hives_loopback_only(lan: Lan, report: dict[str, Any]) -> None:
    (proc,) = engines_on_h1(lan, WHISPER.binary)
    argv = proc.cmdline()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--threads") + 1] == "1"  # hives.conf's WorkerThreads reached the hive
    port = engine_port(proc)
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


def test_a_bad_deadline_for_the_front_is_400(lan: Lan, pinned: ssl.SSLContext, report: dict[str, Any]) -> None:
    speech = worker(report, "transcribe")
    for given in ("soon", "0", "-1", "1e9", "nan", "inf"):
        status, body = front_request(lan, pinned, "GET", f"/v1/workers/{speech['info']['id']}/engine/",
                                     str(speech["api_key"]), headers={"X-Rbee-Timeout": given})
        assert status == 400, (given, body)
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_timeout" and "x-rbee-timeout" in error["message"]


# ---- images on the same hive ----------------------------------------------------------------------------

FAST = {"steps": 1, "cfg_scale": 1.0}


def draw(fleet: Queen, pinned: ssl.SSLContext, model: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"https://127.0.0.1:{fleet.port}/v1/images/generations", verify=pinned, timeout=600,
                      headers={"x-rbee-hive": "h1"},
                      json={"model": model, "prompt": "a bee", "size": "64x64", **FAST, **fields})


@pytest.fixture(scope="module")
def drawn(fleet: Queen, pinned: ssl.SSLContext, image_model: str) -> Any:
    """An image drawn on h1 through the queen, with OpenAI's SDK, over TLS."""
    client = openai.OpenAI(base_url=f"https://127.0.0.1:{fleet.port}/v1", api_key="unused",
                           default_headers={"x-rbee-hive": "h1"},
                           http_client=httpx.Client(verify=pinned, timeout=600))
    return client.images.with_raw_response.generate(model=image_model, prompt="a bee", size="128x64",
                                                    n=2, extra_body=FAST)


def test_an_image_worker_on_a_lan_hive_draws_through_the_queen_over_tls(fleet: Queen, lan: Lan, drawn: Any,
                                                                        pinned: ssl.SSLContext) -> None:
    assert drawn.headers["x-rbee-hive"] == "h1"
    images = drawn.parse().data or []
    assert [png_size(base64.b64decode(i.b64_json or "")) for i in images] == [(128, 64), (128, 64)]
    workers = httpx.get(f"https://127.0.0.1:{fleet.port}/v1/workers", verify=pinned, timeout=10).json()
    image = next(w for w in workers if w["id"] == drawn.headers["x-rbee-worker"])
    assert (image["hive"], image["mode"]) == ("h1", "image")
    assert image["url"] == f"https://{lan.hosts[0].address}:{HIVE_PORT}/v1/workers/{image['id']}/engine"


def test_sd_server_is_not_reachable_from_another_host(lan: Lan, drawn: Any) -> None:
    (proc,) = engines_on_h1(lan, SD.binary)
    argv = proc.cmdline()
    assert argv[argv.index("--listen-ip") + 1] == "127.0.0.1"
    port = engine_port(proc)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((lan.hosts[0].address, port), timeout=5).close()
    assert lan.run("h1", "bash", "-c", f"echo > /dev/tcp/{lan.hosts[0].address}/{port}").returncode != 0


def engine_connections(lan: Lan, port: int) -> list[str]:
    """The hive's open connections to an engine's port, on h1 (`ss`, inside its namespace)."""
    listed = lan.run("h1", "ss", "-Htn", "state", "established", f"( dport = :{port} )", check=True)
    return [line for line in listed.stdout.splitlines() if line.strip()]


def test_the_front_cuts_the_engine_at_the_queens_deadline(lan: Lan, pinned: ssl.SSLContext, drawn: Any,
                                                          fleet: Queen) -> None:
    image = worker(hive_report(lan, pinned), "image")
    (proc,) = engines_on_h1(lan, SD.binary)
    status, body = endless_draw(lan, pinned, image, {"X-Rbee-Timeout": "1.5"})
    assert status == 504, body  # hours of drawing, cut at the deadline
    assert json.loads(body)["error"]["code"] == "deadline_exceeded"
    assert wait_for(lambda: not engine_connections(lan, engine_port(proc)), 20), "the engine's connection stayed"
    assert proc.is_running()  # the worker stays; only the request was cut


def endless_draw(lan: Lan, pinned: ssl.SSLContext, image: dict[str, Any],
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A draw of 100,000 steps (hours) asked of an image worker's engine through the front, with its key."""
    slow = {"prompt": 'a bee<sd_cpp_extra_args>{"seed": 1, "sample_params": {"sample_steps": 100000}}'
                      "</sd_cpp_extra_args>", "n": 1, "size": "64x64", "output_format": "png"}
    return front_request(lan, pinned, "POST", f"/v1/workers/{image['info']['id']}/engine/v1/images/generations",
                         str(image["api_key"]), json.dumps(slow).encode(),
                         {"Content-Type": "application/json", **(headers or {})}, timeout=3600)


def test_an_engine_killed_mid_request_on_a_lan_hive_is_retried_on_a_fresh_worker(
        fleet: Queen, lan: Lan, pinned: ssl.SSLContext, image_model: str, drawn: Any) -> None:
    (proc,) = engines_on_h1(lan, SD.binary)
    image = worker(hive_report(lan, pinned), "image")
    victim = str(image["info"]["id"])
    busy = threading.Thread(target=endless_draw, args=(lan, pinned, image), daemon=True)
    busy.start()  # sd-server draws one image at a time: the queen's request waits in the engine behind this one
    assert wait_for(lambda: bool(engine_connections(lan, engine_port(proc))), 30)
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("resp", draw(fleet, pinned, image_model)))
    thread.start()
    assert wait_for(lambda: len(engine_connections(lan, engine_port(proc))) == 2, 60)  # both in the engine
    proc.kill()  # as a crash would
    thread.join(600)
    busy.join(60)
    answered = result["resp"]
    assert answered.status_code == 200, answered.text  # the front said "engine gone": the queen asked another
    assert answered.headers["x-rbee-worker"] != victim and answered.headers["x-rbee-hive"] == "h1"
    assert png_size(base64.b64decode(answered.json()["data"][0]["b64_json"])) == (64, 64)
    again = draw(fleet, pinned, image_model)
    assert again.status_code == 200, again.text
    assert again.headers["x-rbee-worker"] != victim
    key = str(image["api_key"])
    assert wait_for(lambda: next(w["info"]["state"] for w in hive_report(lan, pinned)["workers"]
                                 if w["info"]["id"] == victim) == "error", 30)
    status, body = front_request(lan, pinned, "GET", f"/v1/workers/{victim}/engine/", key)  # its port: nobody's
    assert status == 502 and json.loads(body)["error"]["code"] == "engine_gone", body


def hive_report(lan: Lan, pinned: ssl.SSLContext) -> dict[str, Any]:
    got = httpx.get(f"https://{lan.hosts[0].address}:{HIVE_PORT}/v1/hive/report", verify=pinned, timeout=10,
                    headers={"Authorization": f"Bearer {hive_token(lan)}"})
    assert got.status_code == 200, got.text
    return dict(got.json())


def hive_token(lan: Lan) -> str:
    return next(line.split('"')[1] for line in lan.run("h1", "cat", ".config/rbee/hive.toml").stdout.splitlines()
                if line.startswith("token"))


def test_hive_install_shipped_the_speech_and_image_engines(fleet: Queen, lan: Lan, pinned: ssl.SSLContext) -> None:
    status = httpx.get(f"https://127.0.0.1:{fleet.port}/v1/status", verify=pinned, timeout=10).json()
    h1 = next(h["engine"] for h in status["hives"] if h["alias"] == "h1")
    engines = lan.hosts[0].home / ".local" / "share" / "rbee" / "engines"
    assert h1["speech"] == str(engines / engine.build_id("cpu", WHISPER) / "bin" / WHISPER.binary)
    assert h1["image"] == str(engines / engine.build_id("cpu", SD) / "bin" / SD.binary)
    # last in this module: a repair restarts the hive (and its workers); it copies nothing twice
    again = fleet.cli("hive", "install", "h1", timeout=600, check=True)
    for binary in ("llama-server", WHISPER.binary, SD.binary):
        assert f"{binary} is already on h1" in again.stderr, again.stderr
