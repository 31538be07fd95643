"""A worker's context comes from its model's trained context (memory allowing), so an agent-sized first
request fits without anyone setting one (the CLIs themselves send 11-14k tokens: test_agent_clis.py); one
that still cannot fit says what to change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anthropic
import pytest

from tests.conftest import Queen
from tests.fixtures.tiny_gguf import write_tiny_model

AGENT_SIZED = [{"role": "user", "content": "hello there, please look at this code " * 480}]


def _client(queen: Queen) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=queen.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, with a header that says it was trained for 32k tokens."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-long.gguf", context_length=32768)


def test_an_agent_sized_prompt_fits_a_context_nobody_set(make_queen: Callable[..., Queen], long_model: Path,
                                                         tiny_model: Path) -> None:
    queen = make_queen()
    del queen.env["RBEE_WORKER_CONTEXT"]
    queen.start()
    client = _client(queen)
    assert client.messages.count_tokens(model=str(long_model), messages=AGENT_SIZED).input_tokens > 4600  # type: ignore[arg-type]
    reply = client.messages.create(model="tiny-long", max_tokens=4, messages=AGENT_SIZED)  # type: ignore[arg-type]
    assert reply.usage.output_tokens == 4
    client.messages.create(model=str(tiny_model), max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    contexts = {w["model"]: w["context_size"] for w in queen.workers()}
    assert contexts == {"tiny-long": 32768, "tiny": 2048}  # each model's own trained context


def test_a_prompt_longer_than_a_set_context_names_the_numbers_and_the_setting(make_queen: Callable[..., Queen],
                                                                               long_model: Path) -> None:
    queen = make_queen(RBEE_WORKER_CONTEXT="512").start()
    with pytest.raises(anthropic.BadRequestError) as caught:
        _client(queen).messages.create(model=str(long_model), max_tokens=4, messages=AGENT_SIZED)  # type: ignore[arg-type]
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "invalid_request_error"
    message = caught.value.body["error"]["message"]
    assert "exceeds the available context size" in message and "512 tokens per slot" in message
    assert "RBEE_WORKER_CONTEXT" in message
