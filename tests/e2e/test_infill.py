"""Fill-in-the-middle on a real queen: `/infill` forwarded to a worker of a model with FIM tokens."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen

CODE = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n    return c\n"}


def test_infill_fills_the_middle(queen: Queen, tiny_fim_model: Path) -> None:
    resp = httpx.post(f"{queen.url}/infill", json={"model": str(tiny_fim_model), **CODE, "n_predict": 6},
                      timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["content"].strip() and body["tokens_predicted"] == 6
    assert resp.headers["x-rbee-worker"]


def test_infill_streams_the_same_text(queen: Queen, tiny_fim_model: Path) -> None:
    ask = {"model": "tiny-fim", **CODE, "n_predict": 8, "temperature": 0}
    whole = httpx.post(f"{queen.url}/infill", json=ask, timeout=60).json()["content"]
    with httpx.stream("POST", f"{queen.url}/infill", json={**ask, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == whole and events[-1]["stop"] is True


def test_a_model_without_fim_tokens_says_so(queen: Queen, tiny_model: Path) -> None:
    resp = httpx.post(f"{queen.url}/infill", json={"model": str(tiny_model), **CODE}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_unsupported"
    assert "Infill is not supported by this model" in resp.json()["error"]["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny-fim", "input_suffix": "x"}, "input_prefix"),
    ({"model": "tiny-fim", "input_prefix": "x", "input_suffix": 3}, "input_suffix"),
    ({"model": "tiny-fim", **CODE, "input_extra": [{"filename": "a.py"}]}, "input_extra.0.text"),
])
def test_a_bad_body_is_400_naming_the_field(queen: Queen, body: dict[str, object], param: str) -> None:
    resp = httpx.post(f"{queen.url}/infill", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param
