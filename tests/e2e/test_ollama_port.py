"""RBEE_OLLAMA_PORT: a real queen that also serves the Ollama API (and `/`) on a port of its own, with the same
keys and rules as its own port, and nothing else there."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Queen, free_port

HELLO = [{"role": "user", "content": "hello there"}]


def test_the_ollama_port_serves_the_ollama_api_under_the_same_keys(make_queen: Callable[..., Queen],
                                                                   tiny_model: Path) -> None:
    port = free_port()
    queen = make_queen(RBEE_OLLAMA_PORT=str(port)).start()
    there = f"http://127.0.0.1:{port}"
    assert ollama.Client(host=there, timeout=120).chat(model=str(tiny_model), messages=HELLO,
                                                       options={"num_predict": 2}).done
    probe = httpx.get(f"{there}/", timeout=10)
    assert probe.status_code == 200 and probe.text == "Ollama is running"
    other = httpx.get(f"{there}/v1/status", timeout=10)
    assert other.status_code == 404 and f"on the queen's port ({queen.port})" in other.json()["error"]
    assert httpx.get(f"{queen.url}/v1/status", timeout=10).status_code == 200

    key = queen.cli("key", "create", "--name", "webui", check=True).stdout.strip()
    refused = httpx.get(f"{there}/api/tags", timeout=10)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
    wrong = httpx.get(f"{there}/api/tags", timeout=10, headers={"Authorization": "Bearer rbee-sk-guessed"})
    assert wrong.status_code == 401 and "tiny" not in wrong.text
    keyed = ollama.Client(host=there, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert "tiny" in {m.model for m in keyed.list().models}
    assert keyed.generate(model="tiny", prompt="hi", options={"num_predict": 2}).done
    for manage in (lambda: keyed.pull("hf.co/rbee-test/tiny-GGUF:Q4_K_M"), lambda: keyed.delete("tiny")):
        with pytest.raises(ollama.ResponseError) as caught:
            manage()
        assert caught.value.status_code == 403 and "admin token" in caught.value.error
    assert "tiny" in {m["name"] for m in httpx.get(f"{queen.url}/v1/catalog", timeout=10,
                                                    headers={"Authorization": f"Bearer {_admin(queen)}"}).json()}


def _admin(queen: Queen) -> str:
    return (queen.home / "config" / "admin.token").read_text().strip()


@pytest.mark.parametrize(("value", "said"), [
    ("eleven", "RBEE_OLLAMA_PORT='eleven' is not a whole number"),
    ("70000", "RBEE_OLLAMA_PORT='70000' must be between 1 and 65535"),
    ("QUEEN", "is the queen's own port"),
    ("TAKEN", "is already in use (Ollama itself, maybe)"),
])
def test_a_bad_ollama_port_stops_the_start_in_one_line(make_queen: Callable[..., Queen], value: str,
                                                       said: str) -> None:
    queen = make_queen()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = {"QUEEN": str(queen.port), "TAKEN": str(taken.getsockname()[1])}.get(value, value)
        result = queen.cli("queen", "start", "--foreground", "--port", str(queen.port), timeout=30,
                           env={"RBEE_OLLAMA_PORT": port})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert said in " ".join(result.stderr.split())
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{queen.url}/health", timeout=2)
