"""Reading a request body into a contract (rbee/queen/requests.py)."""

from __future__ import annotations

import pytest

from rbee.contracts.openai import ChatCompletionRequest, EmbeddingRequest
from rbee.queen.requests import field_of, parse_body

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "system": "be brief"}'


@pytest.mark.parametrize("name", ["model", "max_tokens", "stream", "messages", "system", "instructions", "options"])
def test_a_field_is_what_getattr_gives_declared_or_not(name: str) -> None:
    parsed = parse_body(CHAT, ChatCompletionRequest)
    assert field_of(parsed, name) == getattr(parsed, name, None)


def test_a_field_the_contract_does_not_declare_comes_from_the_body_or_is_none() -> None:
    parsed = parse_body(CHAT, ChatCompletionRequest)
    assert "system" not in ChatCompletionRequest.model_fields
    assert field_of(parsed, "system") == "be brief" and field_of(parsed, "instructions") is None
    embed = parse_body(b'{"model": "m", "input": "hi", "stream": true}', EmbeddingRequest)
    assert field_of(embed, "stream") is True and field_of(embed, "max_tokens") is None
