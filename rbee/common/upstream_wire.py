"""The wire of rbee.common.upstream: one HTTP/1.1 connection as an asyncio protocol with httptools' parser (llhttp in
C), the answer being read on it, and the pieces a request is made of (its origin, socket and head). The pool,
retries and the body's consumer are upstream.py's.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers together
MAX_HEADERS = 100
HIGH_WATER = 256 * 1024  # body bytes received and not yet taken before reading the socket pauses


class BadAnswer(ConnectionError):
    """The peer's answer is not HTTP/1.1 as rbee reads it: malformed, or past a bound."""


@dataclass(frozen=True)
class Origin:
    """Where a URL's requests go; with its path (and query), what `origin()` parses a URL into."""

    https: bool
    host: str
    port: int
    family: int | None  # the address family of an IP literal; None for a name (resolved per connection)

    @property
    def authority(self) -> str:
        """What the Host header says."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.https else 80) else f"{host}:{self.port}"


@lru_cache(maxsize=1024)
def origin(url: str) -> tuple[Origin, str]:
    """The origin and request target of an absolute http(s) URL (ValueError for anything else)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url[:200]!r}")
    https = parts.scheme == "https"
    try:
        family: int | None = socket.AF_INET6 if ipaddress.ip_address(parts.hostname).version == 6 else socket.AF_INET
    except ValueError:
        family = None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(https, parts.hostname, parts.port or (443 if https else 80), family), target


def tcp_socket(family: int, user_timeout_s: float | None) -> socket.socket:
    """A non-blocking TCP socket: no Nagle delay, keepalive probes, and, given `user_timeout_s`, giving up when
    what it sent is not acknowledged within that long (TCP_USER_TIMEOUT): a request written on a kept
    connection to a machine whose link was cut fails at once, instead of after minutes of retransmissions."""
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if user_timeout_s is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout_s * 1000))
    return sock


def request_head(method: str, target: str, host: str, headers: dict[str, str], length: int) -> bytes:
    """The request line and headers (ours: Host and Content-Length; any given ones of those dropped)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers.items():
        if name.lower() not in ("host", "content-length", "transfer-encoding"):
            lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    head = "".join(lines)
    breaks = len(lines) + 2  # each line ends in one CRLF, the head in two: no header smuggles in another
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("a request line or header holds a line break")
    return head.encode("latin-1")


class Connection(asyncio.Protocol):
    """One connection and the answer being read on it (one at a time: no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[object, ...]) -> None:
        self._loop, self.key, self.lost = loop, key, False
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.idle_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._begin(None)

    def _begin(self, head: asyncio.Future[None] | None) -> None:
        self.headed = head  # set once status and headers are read (or the exchange failed first)
        self.status, self._count, self._head_bytes, self._buffered = 0, 0, 0, 0
        self.headers: dict[str, str] = {}
        self._body: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = self._until_close = self.ended = self.reusable = False
        self.received = False  # any byte of the answer
        self.error: BaseException | None = None

    def start(self) -> asyncio.Future[None]:
        """Get ready for the next answer; the future is set once its head is read."""
        head: asyncio.Future[None] = self._loop.create_future()
        self._begin(head)
        return head

    # -- the transport's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.headed is None or self.ended:  # nothing was asked: a peer talking out of turn is not kept
            self.abort(BadAnswer("the peer sent bytes nobody asked for"))
            return
        self.received = True
        heading = not self.headed.done()
        if heading:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, BadAnswer) else None
            self.abort(cause or BadAnswer(f"the peer's answer is not valid HTTP/1.1 ({exc})"))
            return
        if heading and not self.headed.done() and self._head_bytes > MAX_HEAD_BYTES:
            self.abort(BadAnswer(f"the peer's status line and headers are over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # an idle one leaves the pool when its timer fires
        if self.headed is not None and not self.ended:
            if exc is None and self.headed.done() and self._until_close:
                self._end(reusable=False)
            else:
                self._fail(exc or ConnectionResetError(errno.ECONNRESET, "the peer closed the connection before "
                                                                         "its answer ended"))
        self.resume_writing()  # a writer waiting for room learns of the loss from `headed`

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        if self._drained is not None:
            await self._drained

    # -- the parser's side
    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > MAX_HEADERS:
            raise BadAnswer(f"the peer sent more than {MAX_HEADERS} headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self.headers, self._count = {}, 0
            return
        self.status = status
        self._until_close = ("content-length" not in self.headers and "chunked" not in
                             self.headers.get("transfer-encoding", "").lower() and status not in (204, 304))
        assert self.headed is not None
        self.headed.set_result(None)

    def on_body(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:  # not an interim answer's end
            self._end(reusable=self._parser.should_keep_alive() and not self._until_close)

    # -- the reader's side
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self, reusable: bool) -> None:
        self.ended, self.reusable = True, reusable
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.headed is not None and not self.headed.done():
            self.headed.set_exception(exc)
            self.headed.exception()  # seen: a request given up while writing its body never awaits it
        self._wake()

    def abort(self, why: BaseException | None = None) -> None:
        """Close at once: an answer not yet ended fails with `why` (ConnectionAbortedError by default)."""
        if not self.ended:
            self._fail(why or ConnectionAbortedError(errno.ECONNABORTED, "the connection was closed by rbee"))
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    async def next_chunk(self) -> bytes:
        """What the body brought since the last call; b"" once it ended (or the error that broke it)."""
        while True:
            if self._body:
                data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
