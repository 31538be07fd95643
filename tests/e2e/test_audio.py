"""Speech to text on a real queen: whisper-server workers of the generated whisper model (it hears " rbee" in
everything), through OpenAI's SDK, every response format, the CLI, a pull from the (fake) hub, a text worker
alongside, and every way an upload can be wrong."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Queen, free_port, queen_env, wait_for
from tests.fixtures.fake_hub import FakeHub

MODEL = "ggml-tiny-test"  # the catalog's name for tests/fixtures' ggml-tiny-test.bin
HUB_REPO = "ggerganov/whisper.cpp"


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(int(seconds * rate)))
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(frames), b"WAVE", b"fmt ", 16, 1, 1, rate,
                         rate * 2, 2, 16, b"data", len(frames))
    return header + frames


@pytest.fixture(scope="module")
def wav() -> bytes:
    return tone_wav(1.0)


@pytest.fixture(scope="module")
def hub(tiny_whisper: Path) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo(HUB_REPO, {"ggml-tiny-test.bin": tiny_whisper.read_bytes(), "README.md": b"# whisper"})
        yield hub


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, whisper_server: Path,
          hub: FakeHub) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("audioqueen")
    port = free_port()
    q = Queen(home, port, {**queen_env(home, port, llama_server), **hub.env(home),
                           "RBEE_WHISPER_SERVER": str(whisper_server)}).start()
    yield q
    assert not q.stop(), "workers outlived their queen"


@pytest.fixture(scope="module")
def speech(queen: Queen, tiny_whisper: Path, wav: bytes) -> dict[str, object]:
    """The first transcription, by path (which adds the model to the catalog and loads a worker)."""
    resp = transcribe(queen, wav, model=str(tiny_whisper))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def transcribe(queen: Queen, data: bytes, path: str = "/v1/audio/transcriptions", filename: str = "a.wav",
               **fields: str) -> httpx.Response:
    return httpx.post(f"{queen.url}{path}", data={"model": MODEL, **fields}, files={"file": (filename, data)},
                      timeout=120)


def test_the_sdk_transcribes_through_the_queen(queen: Queen, speech: dict[str, object], wav: bytes) -> None:
    assert "rbee" in str(speech["text"])
    client = openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused")
    raw = client.audio.transcriptions.with_raw_response.create(model=MODEL, file=("tone.wav", wav))
    assert raw.headers["x-rbee-worker"] and raw.headers["x-rbee-hive"] == "localhost"
    assert "rbee" in raw.parse().text
    workers = [w for w in queen.workers() if w["model"] == MODEL]
    assert [w["mode"] for w in workers] == ["transcribe"] and workers[0]["slots"] == 1


def test_every_response_format_has_its_shape(queen: Queen, speech: dict[str, object], wav: bytes) -> None:
    text = transcribe(queen, wav, response_format="text")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text.strip().startswith("rbee")
    srt = transcribe(queen, wav, response_format="srt")
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:") and " --> " in srt.text
    vtt = transcribe(queen, wav, response_format="vtt")
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT") and " --> " in vtt.text
    verbose = transcribe(queen, wav, response_format="verbose_json").json()
    assert verbose["task"] == "transcribe" and verbose["duration"] == pytest.approx(1.0, abs=0.05)
    segment = verbose["segments"][0]
    assert "rbee" in segment["text"] and 0 <= segment["start"] <= segment["end"]


def test_a_translation_asks_the_engine_to_translate(queen: Queen, speech: dict[str, object], wav: bytes) -> None:
    client = openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused")
    translated = client.audio.translations.create(model=MODEL, file=("tone.wav", wav), response_format="verbose_json")
    assert translated.model_dump()["task"] == "translate" and "rbee" in translated.text


def test_models_say_their_kind(queen: Queen, speech: dict[str, object], tiny_model: Path) -> None:
    assert httpx.post(f"{queen.url}/v1/chat/completions", json={"model": str(tiny_model), "max_tokens": 1,
                      "messages": [{"role": "user", "content": "hi"}]}, timeout=60).status_code == 200
    kinds = {m["id"]: m["kind"] for m in httpx.get(f"{queen.url}/v1/models", timeout=10).json()["data"]}
    assert kinds[MODEL] == "speech" and kinds["tiny"] == "text"
    entry = next(e for e in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json() if e["name"] == MODEL)
    assert entry["architecture"] == "whisper" and entry["kind"] == "speech"
    info = json.loads(queen.cli("model", "info", MODEL, "--json", check=True).stdout)
    memory, size = info["memory"], info["entry"]["size_bytes"]
    assert (memory["slots"], memory["kv_cache"]) == (1, 0)
    assert memory["total"] == size + size * 2 // 5 + 220 * 2**20  # weights + 40 % + 220 MiB
    assert MODEL in queen.cli("model", "ls", check=True).stdout


def test_usage_counts_the_seconds_of_audio(queen: Queen, speech: dict[str, object]) -> None:
    before = _audio_seconds(queen)
    assert transcribe(queen, tone_wav(2.0)).status_code == 200
    assert wait_for(lambda: _audio_seconds(queen) >= before + 1.99, 10)


@pytest.mark.skipif(shutil.which("lame") is None, reason="needs lame (Debian's `lame`; .ci/run installs it)")
def test_usage_counts_the_seconds_of_an_mp3(queen: Queen, speech: dict[str, object], tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(tone_wav(3.0))
    subprocess.run(["lame", "--quiet", "-V", "5", str(tmp_path / "a.wav"), str(tmp_path / "a.mp3")], check=True)
    before = _audio_seconds(queen)
    heard = transcribe(queen, (tmp_path / "a.mp3").read_bytes(), filename="a.mp3")
    assert heard.status_code == 200, heard.text  # whisper-server decodes MP3 itself
    assert wait_for(lambda: _audio_seconds(queen) >= before + 3.0, 10)
    assert _audio_seconds(queen) < before + 3.2  # lame's padding, not a guess


def _audio_seconds(queen: Queen) -> float:
    rows = httpx.get(f"{queen.url}/v1/usage", timeout=10).json()
    return sum(r["audio_seconds"] for r in rows if r["model"] == MODEL)


def test_a_text_worker_and_a_speech_worker_serve_at_once(queen: Queen, speech: dict[str, object],
                                                         tiny_model: Path) -> None:
    def chat() -> httpx.Response:
        return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
            "model": str(tiny_model), "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})

    assert chat().status_code == 200  # the text worker is loaded
    result: dict[str, httpx.Response] = {}
    audio = threading.Thread(target=lambda: result.setdefault("resp", transcribe(queen, tone_wav(20.0))))
    audio.start()
    assert wait_for(lambda: any(w["in_flight"] for w in queen.workers() if w["mode"] == "transcribe"), 60)
    answered = chat()  # while the speech worker is busy with the recording
    busy = [w for w in queen.workers() if w["in_flight"]]
    audio.join(120)
    assert answered.status_code == 200 and result["resp"].status_code == 200
    assert [w["mode"] for w in busy] == ["transcribe"], "the chat waited for the transcription"
    ready = {w["mode"] for w in queen.workers() if w["state"] == "ready" and w["hive"] == "localhost"}
    assert ready == {"generate", "transcribe"}


def test_the_cli_prints_the_text(queen: Queen, speech: dict[str, object], tmp_path: Path) -> None:
    recording = tmp_path / "tone.wav"
    recording.write_bytes(tone_wav(1.0))
    out = queen.cli("transcribe", str(recording), "-m", MODEL, check=True)
    assert out.stdout.strip().startswith("rbee")
    as_json = queen.cli("transcribe", str(recording), "-m", MODEL, "--format", "json", check=True)
    assert '"text"' in as_json.stdout
    missing = queen.cli("transcribe", str(tmp_path / "nope.wav"), "-m", MODEL)
    assert missing.returncode != 0 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    bad = queen.cli("transcribe", str(recording), "-m", MODEL, "--format", "docx")
    assert bad.returncode != 0 and "--format takes one of" in bad.stderr


def test_a_real_voice_from_espeak(queen: Queen, speech: dict[str, object], tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt install espeak-ng; .ci/run installs it)")
    recording = tmp_path / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(recording), "Hello from rbee"], check=True, capture_output=True)
    client = openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused")
    with recording.open("rb") as f:
        result = client.audio.transcriptions.create(model=MODEL, file=f, response_format="verbose_json")
    assert result.model_dump()["duration"] > 0.5 and "rbee" in result.text


def test_a_whisper_model_pulls_from_the_hub(queen: Queen) -> None:
    name = f"{HUB_REPO}/ggml-tiny-test.bin"
    pulled = queen.cli("model", "pull", name, check=True)
    assert f"{name} is on localhost" in pulled.stderr
    entry = next(e for e in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json() if e["name"] == name)
    assert entry["kind"] == "speech" and entry["source"] == "hf"
    assert transcribe(queen, tone_wav(0.5), model=name).status_code == 200


def _error(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    return dict(resp.json()["error"])


@pytest.mark.parametrize(("data", "code"), [(b"", "empty_file"), (b"just some text, not a recording\n" * 20,
                                                                     "invalid_audio")])
def test_an_upload_that_is_not_audio_is_400(queen: Queen, speech: dict[str, object], data: bytes,
                                            code: str) -> None:
    error = _error(transcribe(queen, data, filename="notes.txt"), 400)
    assert error["code"] == code and error["param"] == "file"


def test_audio_that_only_looks_like_audio_is_400(queen: Queen, speech: dict[str, object]) -> None:
    damaged = b"RIFF\x24\x00\x00\x00WAVE" + b"junk" * 64  # a WAV's signature, then no fmt or data chunk
    error = _error(transcribe(queen, damaged), 400)  # whisper-server's own refusal, in OpenAI's shape
    assert error["code"] == "invalid_audio" and error["param"] == "file" and "could not decode" in error["message"]
    assert transcribe(queen, tone_wav(0.5)).status_code == 200  # the worker is fine


def test_an_unknown_response_format_is_400(queen: Queen, speech: dict[str, object], wav: bytes) -> None:
    error = _error(transcribe(queen, wav, response_format="docx"), 400)
    assert error["param"] == "response_format" and error["code"] == "invalid_value"


def test_a_form_without_a_file_or_not_a_form_is_400(queen: Queen, speech: dict[str, object]) -> None:
    no_file = httpx.post(f"{queen.url}/v1/audio/transcriptions", files={"model": (None, MODEL)}, timeout=30)
    assert _error(no_file, 400)["param"] == "file"
    as_json = httpx.post(f"{queen.url}/v1/audio/transcriptions", json={"model": MODEL}, timeout=30)
    assert _error(as_json, 400)["code"] == "invalid_content_type"


def test_a_text_model_asked_to_transcribe_is_400_naming_its_kind(queen: Queen, tiny_model: Path,
                                                                 wav: bytes) -> None:
    error = _error(transcribe(queen, wav, model=str(tiny_model)), 400)
    assert error["code"] == "model_not_speech" and "is a text model" in error["message"]


def test_a_speech_model_asked_to_chat_is_400(queen: Queen, speech: dict[str, object]) -> None:
    resp = httpx.post(f"{queen.url}/v1/chat/completions",
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert _error(resp, 400)["code"] == "model_is_speech"


def test_a_huge_file_is_413(make_queen: Callable[..., Queen], whisper_server: Path) -> None:
    queen = make_queen(RBEE_AUDIO_MAX_MB="1", RBEE_WHISPER_SERVER=str(whisper_server)).start()
    error = _error(transcribe(queen, tone_wav(40.0)), 413)  # 1.28 MB
    assert "RBEE_AUDIO_MAX_MB" in error["message"] and error["param"] == "file"
    assert queen.workers() == []  # refused before any worker was started for it


def _busy_speech_workers(queen: Queen) -> list[dict[str, object]]:
    return [w for w in queen.workers() if w["mode"] == "transcribe" and w["in_flight"] and w["state"] == "ready"]


def _crash(worker: dict[str, object]) -> str:
    """SIGKILL a worker's whisper-server, as a crash would; its id."""
    os.kill(int(str(worker["pid"])), signal.SIGKILL)
    return str(worker["id"])


def test_an_engine_that_crashes_mid_request_is_retried_on_a_fresh_worker(queen: Queen,
                                                                         speech: dict[str, object]) -> None:
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("resp", transcribe(queen, tone_wav(20.0))))
    thread.start()
    assert wait_for(lambda: bool(_busy_speech_workers(queen)), 60)
    victim = _crash(_busy_speech_workers(queen)[0])
    thread.join(60)
    assert result["resp"].status_code == 200, result["resp"].text  # before its first byte: once more, elsewhere
    assert result["resp"].headers["x-rbee-worker"] != victim
    assert next(w for w in queen.workers() if w["id"] == victim)["state"] == "error"


def test_an_engine_that_keeps_crashing_is_an_error_and_the_next_request_restarts_it(
        queen: Queen, speech: dict[str, object]) -> None:
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("resp", transcribe(queen, tone_wav(20.0))))
    thread.start()
    crashed: set[str] = set()

    def crash_every_worker_until_it_answers() -> bool:
        crashed.update(_crash(w) for w in _busy_speech_workers(queen) if w["id"] not in crashed)
        return not thread.is_alive()

    assert wait_for(crash_every_worker_until_it_answers, 90) and crashed
    status = result["resp"].status_code
    assert status in (502, 503), result["resp"].text  # the retry's worker crashed too, or waits out a backoff
    assert result["resp"].json()["error"]["message"]
    answered: list[httpx.Response] = []
    assert wait_for(lambda: answered.append(transcribe(queen, tone_wav(0.5))) or answered[-1].status_code == 200,
                    30), answered[-1].text  # after crashes in a row the next start waits a second or two
    assert answered[-1].headers["x-rbee-worker"] not in crashed


def test_keys_scopes_and_deadlines_apply_to_audio(make_queen: Callable[..., Queen], whisper_server: Path,
                                                  tiny_whisper: Path) -> None:
    queen = make_queen(RBEE_WHISPER_SERVER=str(whisper_server)).start()
    assert transcribe(queen, tone_wav(0.5), model=str(tiny_whisper)).status_code == 200  # the owner adds it
    allowed = queen.cli("key", "create", "--name", "ears", "--models", MODEL, check=True).stdout.strip()
    other = queen.cli("key", "create", "--name", "eyes", "--models", "tiny", check=True).stdout.strip()

    def as_key(secret: str | None, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.post(f"{queen.url}/v1/audio/transcriptions", data={"model": MODEL}, timeout=60,
                          files={"file": ("a.wav", tone_wav(0.5))}, headers={**auth, **headers})

    assert as_key(allowed).status_code == 200
    assert as_key(other).status_code == 403
    assert as_key(None).status_code == 401 and as_key("sk-wrong").status_code == 401
    assert _error(as_key(allowed, **{"x-rbee-timeout": "nonsense"}), 400)["param"] == "x-rbee-timeout"
    assert _error(as_key(allowed, **{"x-rbee-timeout": "0.2"}), 504)["code"] == "deadline_exceeded"
    admin = {"Authorization": "Bearer " + (queen.home / "config" / "admin.token").read_text().strip()}
    rows = httpx.get(f"{queen.url}/v1/usage", headers=admin, timeout=10).json()
    usage = {r["name"]: r for r in rows if r["model"] == MODEL}
    assert (usage["ears"]["requests"], usage["ears"]["errors"]) == (2, 1)  # the 504 counts, its audio does not
    assert usage["ears"]["audio_seconds"] == pytest.approx(0.5)
    # A second of audio counts as AUDIO_TOKENS_PER_SECOND (10) tokens against the key's tpm: 6 s are 60 > 50.
    budget = queen.cli("key", "create", "--name", "budget", "--models", MODEL, "--tpm", "50", check=True).stdout.strip()
    heard = httpx.post(f"{queen.url}/v1/audio/transcriptions", data={"model": MODEL}, timeout=120,
                       files={"file": ("a.wav", tone_wav(6.0))}, headers={"Authorization": f"Bearer {budget}"})
    assert heard.status_code == 200, heard.text
    over = _error(as_key(budget), 429)
    assert over["type"] == "rate_limit_error" and over["code"] == "rate_limit_exceeded"
    assert "50 tokens per minute" in over["message"]
    assert as_key(allowed).status_code == 200  # another key's budget is its own


def test_a_web_page_cannot_upload_to_a_keyless_queen(queen: Queen, speech: dict[str, object]) -> None:
    """A form post needs no CORS preflight: the queen refuses it by its Origin before reading the upload."""
    resp = httpx.post(f"{queen.url}/v1/audio/transcriptions", data={"model": MODEL},
                      files={"file": ("a.wav", tone_wav(0.5))}, headers={"Origin": "https://evil.example"}, timeout=30)
    assert _error(resp, 403)["message"]
