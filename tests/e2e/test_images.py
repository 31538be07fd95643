"""Text to image on a real queen: sd-server workers of the generated image model (tests/fixtures/tiny_sd.py: it
draws noise), through OpenAI's SDK, the CLI, a text worker alongside, a crashing engine, keys, and every way a
request can be wrong. One step without guidance (cfg_scale 1) at 64 pixels keeps each image to seconds."""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Queen, free_port, queen_env, wait_for
from tests.fixtures.fake_hub import FakeHub

MODEL = "tiny-sd-v2"  # the catalog's name for the generated tiny-sd-v2.gguf
FAST = {"steps": 1, "cfg_scale": 1.0}


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def queen(tmp_path_factory: pytest.TempPathFactory, llama_server: Path, sd_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("imagequeen")
    port = free_port()
    q = Queen(home, port, {**queen_env(home, port, llama_server), "RBEE_SD_SERVER": str(sd_server),
                           "RBEE_IMAGE_MAX_PIXELS": str(256 * 256)}).start()
    yield q
    assert not q.stop(), "workers outlived their queen"


def generate(queen: Queen, model: str = MODEL, **fields: Any) -> httpx.Response:
    body = {"model": model, "prompt": "a bee", "size": "64x64", **FAST, **fields}
    return httpx.post(f"{queen.url}/v1/images/generations", json=body, timeout=300)


@pytest.fixture(scope="module")
def drawn(queen: Queen, tiny_sd: Path) -> dict[str, Any]:
    """The first image, by path (which adds the model to the catalog and loads a worker)."""
    resp = generate(queen, model=str(tiny_sd), seed=7)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _error(resp: httpx.Response, status: int) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    return dict(resp.json()["error"])


def test_the_sdk_gets_pngs_of_the_asked_size(queen: Queen, drawn: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{queen.url}/v1", api_key="unused")
    raw = client.images.with_raw_response.generate(model=MODEL, prompt="two bees", n=2, size="128x64",  # type: ignore[arg-type]
                                                    extra_body=FAST)
    assert raw.headers["x-rbee-worker"] and raw.headers["x-rbee-hive"] == "localhost"
    images = raw.parse().data or []
    assert len(images) == 2
    assert [png_size(base64.b64decode(i.b64_json or "")) for i in images] == [(128, 64), (128, 64)]
    workers = [w for w in queen.workers() if w["model"] == MODEL]
    assert [w["mode"] for w in workers] == ["image"] and workers[0]["slots"] == 1


def test_the_same_seed_draws_the_same_image(queen: Queen, drawn: dict[str, Any]) -> None:
    again = generate(queen, seed=7).json()
    other = generate(queen, seed=8).json()
    assert again["data"][0]["b64_json"] == drawn["data"][0]["b64_json"]
    assert other["data"][0]["b64_json"] != drawn["data"][0]["b64_json"]


def test_the_model_says_its_kind(queen: Queen, drawn: dict[str, Any]) -> None:
    kinds = {m["id"]: m["kind"] for m in httpx.get(f"{queen.url}/v1/models", timeout=10).json()["data"]}
    assert kinds[MODEL] == "image"
    entry = next(e for e in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json() if e["name"] == MODEL)
    assert entry["architecture"] == "stable-diffusion" and entry["kind"] == "image"
    info = json.loads(queen.cli("model", "info", MODEL, "--json", check=True).stdout)
    memory, size = info["memory"], info["entry"]["size_bytes"]
    assert (memory["slots"], memory["kv_cache"]) == (1, 0)
    assert memory["total"] == size + 256 * 256 * 6400 + 256 * 2**20  # weights + the VAE's buffer + overhead


def test_usage_counts_images(queen: Queen, drawn: dict[str, Any]) -> None:
    def images() -> int:
        return sum(r["images"] for r in httpx.get(f"{queen.url}/v1/usage", timeout=10).json() if r["model"] == MODEL)

    before = images()
    assert generate(queen, n=2).status_code == 200
    assert wait_for(lambda: images() >= before + 2, 10)


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"response_format": "url"}, "response_format", "unsupported_response_format"),
    ({"size": "100x100"}, "size", "invalid_size"),
    ({"size": "1024x1024"}, "size", "invalid_size"),  # over RBEE_IMAGE_MAX_PIXELS
    ({"size": "big"}, "size", None),
    ({"n": 0}, "n", None),
    ({"sampler": "magic"}, "sampler", None),
    ({"prompt": "a bee<sd_cpp_extra_args>{\"width\": 4096}</sd_cpp_extra_args>"}, "prompt", "invalid_prompt"),
])
def test_a_bad_request_is_400_naming_the_field(queen: Queen, fields: dict[str, Any], param: str,
                                               code: str | None) -> None:
    error = _error(generate(queen, **fields), 400)
    assert error["param"] == param and error["message"]
    assert code is None or error["code"] == code


def test_a_text_model_asked_for_an_image_is_400_naming_its_kind(queen: Queen, tiny_model: Path) -> None:
    error = _error(generate(queen, model=str(tiny_model)), 400)
    assert error["code"] == "model_not_image" and "is a text model" in error["message"]


def test_an_image_model_asked_to_chat_is_400(queen: Queen, drawn: dict[str, Any]) -> None:
    resp = httpx.post(f"{queen.url}/v1/chat/completions",
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert _error(resp, 400)["code"] == "model_is_image"


def test_the_cli_writes_the_png(queen: Queen, drawn: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "bee.png"
    out = queen.cli("infer", "-m", MODEL, "-p", "a bee", "--size", "64x64", "-o", str(target), "--seed", "3",
                    timeout=300, check=True)
    assert out.stdout.strip() == str(target) and png_size(target.read_bytes()) == (64, 64)
    bad = queen.cli("infer", "-m", MODEL, "-p", "a bee", "--size", "65x64", "-o", str(tmp_path / "x.png"))
    assert bad.returncode != 0 and "multiples of 64" in bad.stderr and "Traceback" not in bad.stderr


def test_worker_start_runs_an_image_model_on_its_engine(queen: Queen, drawn: dict[str, Any]) -> None:
    before = {str(w["id"]) for w in queen.workers()}
    queen.cli("worker", "start", MODEL, timeout=300, check=True)
    started = [w for w in queen.workers() if str(w["id"]) not in before]
    assert [(w["model"], w["mode"], w["state"]) for w in started] == [(MODEL, "image", "ready")]
    queen.cli("worker", "stop", str(started[0]["id"]), check=True)
    assert wait_for(lambda: all(w["id"] != started[0]["id"] or w["state"] == "stopped" for w in queen.workers()),
                    30)


def _busy_image_workers(queen: Queen) -> list[dict[str, object]]:
    return [w for w in queen.workers() if w["mode"] == "image" and w["in_flight"] and w["state"] == "ready"]


def test_a_text_worker_and_an_image_worker_serve_at_once(queen: Queen, drawn: dict[str, Any],
                                                         tiny_model: Path) -> None:
    def chat() -> httpx.Response:
        return httpx.post(f"{queen.url}/v1/chat/completions", timeout=120, json={
            "model": str(tiny_model), "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})

    assert chat().status_code == 200  # the text worker is loaded
    result: dict[str, httpx.Response] = {}
    image = threading.Thread(target=lambda: result.setdefault("resp", generate(queen, steps=12)))
    image.start()
    assert wait_for(lambda: bool(_busy_image_workers(queen)), 60)
    answered = chat()  # while the image worker is busy drawing
    busy = [w["mode"] for w in queen.workers() if w["in_flight"]]
    image.join(300)
    assert answered.status_code == 200 and result["resp"].status_code == 200, result["resp"].text
    assert busy == ["image"], "the chat waited for the image"
    ready = {w["mode"] for w in queen.workers() if w["state"] == "ready" and w["hive"] == "localhost"}
    assert ready == {"generate", "image"}


def _crash(worker: dict[str, object]) -> str:
    """SIGKILL a worker's sd-server, as a crash would; its id."""
    os.kill(int(str(worker["pid"])), signal.SIGKILL)
    return str(worker["id"])


def test_an_engine_that_crashes_is_an_error_and_the_next_request_restarts_it(queen: Queen,
                                                                            drawn: dict[str, Any]) -> None:
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("resp", generate(queen, steps=40)))
    thread.start()
    crashed: set[str] = set()

    def crash_every_worker_until_it_answers() -> bool:
        crashed.update(_crash(w) for w in _busy_image_workers(queen) if w["id"] not in crashed)
        return not thread.is_alive()

    assert wait_for(crash_every_worker_until_it_answers, 240) and crashed
    assert result["resp"].status_code in (502, 503), result["resp"].text  # the retry's worker crashed too
    assert result["resp"].json()["error"]["message"]
    answered: list[httpx.Response] = []
    assert wait_for(lambda: answered.append(generate(queen)) or answered[-1].status_code == 200,
                    120), answered[-1].text  # after crashes in a row the next start waits a second or two
    assert answered[-1].headers["x-rbee-worker"] not in crashed


def test_keys_scopes_and_deadlines_apply_to_images(make_queen: Callable[..., Queen], sd_server: Path,
                                                   tiny_sd: Path) -> None:
    queen = make_queen(RBEE_SD_SERVER=str(sd_server), RBEE_IMAGE_MAX_PIXELS=str(128 * 128)).start()
    assert generate(queen, model=str(tiny_sd)).status_code == 200  # the owner adds it
    allowed = queen.cli("key", "create", "--name", "painter", "--models", MODEL, check=True).stdout.strip()
    other = queen.cli("key", "create", "--name", "writer", "--models", "tiny", check=True).stdout.strip()

    def as_key(secret: str | None, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.post(f"{queen.url}/v1/images/generations", timeout=120, headers={**auth, **headers},
                          json={"model": MODEL, "prompt": "a bee", "size": "64x64", **FAST})

    assert as_key(allowed).status_code == 200
    assert _error(as_key(other), 403)["message"]
    assert as_key(None).status_code == 401 and as_key("sk-wrong").status_code == 401
    assert _error(as_key(allowed, **{"x-rbee-timeout": "0.1"}), 504)["code"] == "deadline_exceeded"
    admin = {"Authorization": "Bearer " + (queen.home / "config" / "admin.token").read_text().strip()}
    rows = httpx.get(f"{queen.url}/v1/usage", headers=admin, timeout=10).json()
    usage = {r["name"]: r for r in rows if r["model"] == MODEL}
    assert (usage["painter"]["requests"], usage["painter"]["errors"], usage["painter"]["images"]) == (2, 1, 1)
    # An image counts as IMAGE_TOKENS (1024) tokens against the key's tpm: once a minute's total reached the
    # limit (1000), the next is refused.
    budget = queen.cli("key", "create", "--name", "budget", "--models", MODEL, "--tpm", "1000", check=True).stdout
    assert as_key(budget.strip()).status_code == 200
    over = _error(as_key(budget.strip()), 429)
    assert over["type"] == "rate_limit_error" and over["code"] == "rate_limit_exceeded"
    assert "1000 tokens per minute" in over["message"]
    assert as_key(allowed).status_code == 200  # another key's budget is its own


def test_an_image_model_pulls_from_the_hub(make_queen: Callable[..., Queen], sd_server: Path, tiny_sd: Path,
                                           tmp_path: Path) -> None:
    """`rbee model pull` takes an image GGUF from a repo shaped like those sd.cpp users pull from, the catalog
    calls it an image model, and it draws under the name it was pulled by."""
    repo, file = "second-state/tiny-sd-GGUF", "tiny-sd-Q4_0.gguf"
    with FakeHub() as hub:
        hub.add_repo(repo, {file: tiny_sd.read_bytes(), "README.md": b"# a diffusion model"})
        queen = make_queen(RBEE_SD_SERVER=str(sd_server), **hub.env(tmp_path)).start()
        name = f"{repo}/{file}"
        pulled = queen.cli("model", "pull", name, check=True)
        assert f"{name} is on localhost" in pulled.stderr
    entry = next(e for e in httpx.get(f"{queen.url}/v1/catalog", timeout=10).json() if e["name"] == name)
    assert entry["kind"] == "image" and entry["source"] == "hf"
    models = {m["id"]: m for m in httpx.get(f"{queen.url}/v1/models", timeout=10).json()["data"]}
    assert models[name]["kind"] == "image"
    drawn = generate(queen, model=name)
    assert drawn.status_code == 200, drawn.text
    assert png_size(base64.b64decode(drawn.json()["data"][0]["b64_json"])) == (64, 64)
