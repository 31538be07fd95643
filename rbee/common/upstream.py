"""A small HTTP/1.1 client for the daemons' hops to engines: the queen to its workers (rbee/queen/proxy.py) and
a hive's front to its fronted engines (rbee/hive/front.py). asyncio protocols, with httptools' parser (llhttp in
C, which uvicorn already loads), so the token path costs one parser callback and one wake-up per read.

    Upstream.request(method, url, body, headers, tls) -> Answer   (its status and headers read)
    Answer.read(limit) -> the whole body;   async for chunk in answer: the body as it arrives (decoded,
        what reads brought, joined, never re-serialised);   Answer.release(): back to the pool if the peer
        keeps it, else closed;   Answer.close(): closed (an engine notices and stops generating)

Bodies end by Content-Length, chunked transfer-encoding (trailers dropped) or the peer closing. Idle connections
are kept per origin (MAX_IDLE, for IDLE_S); a request on a kept connection the peer had closed is sent once more
on a new one (not when the peer stopped acknowledging: TCP_USER_TIMEOUT, a cut link: ask another worker).

Errors are OSErrors, as the socket's own: `BadAnswer` (not HTTP, or past a bound: MAX_HEAD_BYTES of status
line and headers, MAX_HEADERS headers), ConnectionResetError (closed before the answer ended),
ConnectionAbortedError (closed by us), TimeoutError (no connection within `connect_s`).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers together
MAX_HEADERS = 100
MAX_WHOLE_BYTES = 256 * 1024 * 1024  # an answer read whole (embeddings of many inputs are the largest)
IDLE_S = 3.0  # shorter than llama-server's 5 s keep-alive, so a kept connection is rarely one it is closing
MAX_IDLE = 16  # idle connections kept per origin
HIGH_WATER = 256 * 1024  # body bytes received and not yet taken before reading the socket pauses
DNS_TTL_S = 10.0  # a host name's addresses are looked up again after this long (aiohttp's default too)


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


def _head(method: str, target: str, host: str, headers: dict[str, str], length: int) -> bytes:
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


class _Connection(asyncio.Protocol):
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


class Answer:
    """A response whose status and headers are read; its body to read whole or iterate."""

    def __init__(self, conn: _Connection, pool: Upstream, then: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._pool: Upstream | None = pool
        self._then = then  # run once the answer is released or closed
        self.status = conn.status
        self.headers = conn.headers  # names in lower case; repeated headers joined with ", "

    @property
    def at_eof(self) -> bool:
        return self._conn.ended and self._conn.error is None

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> bytes:
        data = await self._conn.next_chunk()
        if not data:
            raise StopAsyncIteration
        return data

    async def read(self, limit: int = MAX_WHOLE_BYTES) -> bytes:
        """The whole body; `BadAnswer` (and the connection closed) when it is over `limit` bytes."""
        length = self.headers.get("content-length", "")
        parts: list[bytes] = []
        size = int(length) if length.isdigit() else 0
        while size <= limit and (data := await self._conn.next_chunk()):
            parts.append(data)
            size += len(data) if not length.isdigit() else 0
        if size > limit:
            self.close()
            raise BadAnswer(f"the peer's answer is over {limit} bytes")
        return b"".join(parts)

    def release(self) -> None:
        """Back to the pool if the answer ended and the peer keeps the connection; else closed."""
        pool, self._pool = self._pool, None
        if pool is not None and self._conn.ended and self._conn.reusable and self._conn.error is None:
            pool.keep(self._conn)
        else:
            self._conn.abort()
        self._done()

    def close(self) -> None:
        self._pool = None
        self._conn.abort()
        self._done()

    def _done(self) -> None:
        then, self._then = self._then, None
        if then is not None:
            then()


Body = bytes | AsyncIterable[bytes]
Address = tuple[int, tuple[Any, ...]]  # an address family and an address of it


class Upstream:
    """A pool of HTTP/1.1 connections, kept per origin (and TLS context) while idle."""

    def __init__(self, *, connect_s: float, user_timeout_s: float | None = None, handshake_s: float = 10.0,
                 idle_s: float = IDLE_S, max_idle: int = MAX_IDLE) -> None:
        self._connect_s, self._user_timeout_s, self._handshake_s = connect_s, user_timeout_s, handshake_s
        self._idle_s, self._max_idle = idle_s, max_idle
        self._idle: dict[tuple[object, ...], deque[_Connection]] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._addresses: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._spares: dict[tuple[object, ...], asyncio.Task[_Connection]] = {}  # connects under way, per origin

    async def request(self, method: str, url: str, body: Body = b"", headers: dict[str, str] | None = None,
                      tls: ssl.SSLContext | None = None, length: int | None = None, spare: bool = False) -> Answer:
        """Send the request and read the answer's head. An iterable `body` needs its `length`.
        `tls`: the context that checks an https peer (the system's trust when None). `spare`: this request's
        connection will not be kept (it asks the peer to close it: llama-server closes every streamed
        answer's), so once the answer ends a new one is opened in the background and kept idle for the next
        request to the origin, which then does not wait for a connect (one such connect per origin at a time)."""
        where, target = origin(url)
        if not isinstance(body, bytes) and length is None:
            raise ValueError("a streamed request body needs its length")
        context = (tls or self._system_tls()) if where.https else None
        key = (where, context)
        size = len(body) if isinstance(body, bytes) else length or 0
        head = _head(method, target, where.authority, headers or {}, size)
        then = (lambda: self._prepare(where, context, key)) if spare else None
        conn = self._kept(key)
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, method, then)
            except OSError as exc:  # a kept connection the peer had closed: once more on a new one
                if (conn.received or not isinstance(body, bytes) or isinstance(exc, BadAnswer | TimeoutError)
                        or getattr(exc, "errno", None) == errno.ETIMEDOUT):
                    raise
        conn = await self._connect(where, context, key)
        return await self._exchange(conn, head, body, method, then)

    def _prepare(self, where: Origin, context: ssl.SSLContext | None, key: tuple[object, ...]) -> None:
        """A connection to `where`, opened in the background and kept idle, unless one is idle or being opened."""
        if self._idle.get(key) or key in self._spares:
            return
        task = asyncio.get_running_loop().create_task(self._connect(where, context, key), name="upstream-spare")
        self._spares[key] = task
        task.add_done_callback(lambda done: self._prepared(key, done))

    def _prepared(self, key: tuple[object, ...], task: asyncio.Task[_Connection]) -> None:
        ours = self._spares.get(key) is task  # not when the pool closed meanwhile
        if ours:
            del self._spares[key]
        if task.cancelled() or task.exception() is not None:  # no loss: the next request connects itself
            return
        if ours:
            self.keep(task.result())
        else:
            task.result().abort()

    async def _exchange(self, conn: _Connection, head: bytes, body: Body, method: str,
                        then: Callable[[], None] | None = None) -> Answer:
        headed = conn.start()
        try:
            assert conn.transport is not None
            if isinstance(body, bytes):
                conn.transport.writelines((head, body))
            else:
                conn.transport.write(head)
                async for part in body:
                    conn.transport.write(part)
                    await conn.drain()
            await headed
            if method == "HEAD":  # no body follows, whatever the headers say
                conn.ended, conn.reusable = True, False
        except BaseException:
            conn.abort()
            raise
        return Answer(conn, self, then)

    def _kept(self, key: tuple[object, ...]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.lost and conn.transport is not None and not conn.transport.is_closing():
                return conn
        self._idle.pop(key, None)
        return None

    def keep(self, conn: _Connection) -> None:
        """An idle connection, kept for the next request to its origin (for `idle_s`, if there is room)."""
        idle = self._idle.get(conn.key)
        if conn.lost or (idle is not None and len(idle) >= self._max_idle):
            conn.abort()
            return
        if idle is None:
            idle = self._idle[conn.key] = deque()
        conn.headed = None
        conn.idle_timer = asyncio.get_running_loop().call_later(self._idle_s, self._expire, conn)
        idle.append(conn)

    def _expire(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:  # a worker gone for good leaves nothing behind
                del self._idle[conn.key]
        conn.abort()

    def _system_tls(self) -> ssl.SSLContext:
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls

    async def _connect(self, where: Origin, context: ssl.SSLContext | None, key: tuple[object, ...]) -> _Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._resolve(where)
        failure: OSError = OSError(errno.EHOSTUNREACH, f"no address for {where.host}")
        for family, address in addresses:
            sock = tcp_socket(family, self._user_timeout_s)
            try:
                async with asyncio.timeout(self._connect_s):
                    await loop.sock_connect(sock, address)
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, key), sock=sock, ssl=context,
                    server_hostname=where.host if context is not None else None,
                    ssl_handshake_timeout=self._handshake_s if context is not None else None)
                return conn
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError) or isinstance(exc, ssl.SSLError):  # a certificate refused: raise
                    raise
                failure = exc  # the next address, if there is one
        raise failure

    async def _resolve(self, where: Origin) -> list[Address]:
        """An IP literal's own address; a name's addresses, looked up at most every DNS_TTL_S."""
        if where.family is not None:
            return [(where.family, (where.host, where.port))]
        loop = asyncio.get_running_loop()
        cached = self._addresses.get((where.host, where.port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        found = await loop.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)
        addresses: list[Address] = [(family, address) for family, _, _, _, address in found]
        self._addresses[(where.host, where.port)] = (loop.time() + DNS_TTL_S, addresses)
        return addresses

    async def close(self) -> None:
        """Close every idle connection and stop the connects under way (answers in flight close with their
        readers)."""
        for task in list(self._spares.values()):
            task.cancel()
        self._spares.clear()
        for idle in list(self._idle.values()):
            while idle:
                self._expire(idle[0])
