"""The pure parts of the queen's inference path (rbee/queen/inference.py): which answer means a worker is gone."""

from __future__ import annotations

import json

import pytest

from rbee.contracts.workers import ENGINE_GONE, timeout_seconds
from rbee.queen.inference import engine_gone
from rbee.queen.proxy import Outcome


def outcome(status: int, tail: bytes) -> Outcome:
    return Outcome(status, tail, "m", "h1", "h1-w1", 0.1, 0.1)


def error(code: str) -> bytes:
    return json.dumps({"error": {"message": "x", "type": "server_error", "param": None, "code": code}}).encode()


def test_a_fronts_engine_gone_is_the_worker_gone() -> None:
    assert engine_gone(outcome(502, error(ENGINE_GONE)))


@pytest.mark.parametrize(("status", "tail"), [
    (502, error("worker_error")),  # an engine's own 502
    (500, error(ENGINE_GONE)),
    (200, error(ENGINE_GONE)),
    (502, b"data: {\"error\": {\"code\": \"engine_gone\"}}\n\n"),  # a stream's tail is never the front's word
    (502, b"not json"),
    (502, b"[1, 2]"),
    (502, json.dumps({"error": "engine_gone"}).encode()),
    (502, error(ENGINE_GONE) + b" " * 5000),  # longer than any front's answer
])
def test_anything_else_is_an_answer(status: int, tail: bytes) -> None:
    assert not engine_gone(outcome(status, tail))


@pytest.mark.parametrize(("raw", "seconds"), [("1.5", 1.5), ("0.1", 0.1), ("86400", 86400.0), ("0.05", None),
                                              ("0", None), ("-1", None), ("86401", None), ("nan", None),
                                              ("inf", None), ("soon", None), ("", None)])
def test_the_timeout_header_is_a_bounded_number(raw: str, seconds: float | None) -> None:
    assert timeout_seconds(raw) == seconds
