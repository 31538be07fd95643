"""The forwarder (rbee/queen/proxy.py): its sockets to workers, and how a stream whose client left is told;
forwarding itself is tested end to end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest

from rbee.common import upstream_wire
from rbee.common.upstream import Answer
from rbee.queen import proxy
from rbee.queen.error_styles import OPENAI
from rbee.queen.scheduler import Lease


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
def test_a_worker_socket_gives_up_on_unacknowledged_data_within_the_connect_timeout() -> None:
    forwarder = proxy.Forwarder()
    sock = upstream_wire.tcp_socket(socket.AF_INET, forwarder._pool._user_timeout_s)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(proxy.WORKER_CONNECT_S * 1000)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    finally:
        sock.close()


class _Worker:
    id, hive = "w1", "local"

    class spec:  # the shape of WorkerInfo.spec the forwarder reads
        class model:
            name = "tiny"


class _Lease:
    worker = _Worker()
    released = 0

    def release(self) -> None:
        self.released += 1


class _Answer:
    """A worker's stream that sent `events` and then neither ends nor breaks (its end still on the way)."""

    status = 200
    at_eof = False

    def __init__(self, events: list[bytes]) -> None:
        self.events, self.closed = events, False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event
        await asyncio.Event().wait()

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        raise AssertionError("a stream that did not end is closed, not kept")


async def _left_after(events: list[bytes], leave_on: bytes) -> proxy.Outcome:
    """Forward `events` to a client that leaves once it got `leave_on`; how the forwarder told the end."""
    ended: list[proxy.Outcome] = []
    got, gone = bytearray(), asyncio.Event()

    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        got.extend(cast(bytes, message.get("body", b"")))
        if leave_on in got:
            gone.set()

    answer = _Answer(events)
    stream = proxy._ForwardedStream(cast(Answer, answer), cast(Lease, _Lease()), {}, ended.append, None, set(),
                                    0.0, OPENAI)
    await asyncio.wait_for(stream({"type": "http"}, receive, send), 10)
    assert answer.closed and len(ended) == 1
    return ended[0]


CHAT_EVENTS = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
               b'data: {"choices":[],"usage":{"completion_tokens":1}}\n\ndata: [DONE]\n\n']


@pytest.mark.parametrize("last", [
    b"data: [DONE]\n\n",
    b'event: response.completed\ndata: {"type":"response.completed"}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
])
async def test_a_client_that_leaves_after_the_last_event_was_served(last: bytes) -> None:
    """Codex closes its connection as soon as `response.completed` comes, maybe before the worker's stream has
    ended on the queen's side: that request was served whole, not broken (it was counted a 502 under load)."""
    outcome = await _left_after([CHAT_EVENTS[0], last], last)
    assert outcome.status == 200 and outcome.events >= 1


async def test_a_client_that_leaves_before_the_last_event_was_not_served() -> None:
    outcome = await _left_after([CHAT_EVENTS[0], b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n'],
                                b"content")
    assert outcome.status == 502  # a generated "data: [DONE]" inside the JSON is no end
