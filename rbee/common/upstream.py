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
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import Any

from rbee.common.upstream_wire import (
    BadAnswer,
    Connection,
    Origin,
    origin,
    request_head,
    tcp_socket,
)

MAX_WHOLE_BYTES = 256 * 1024 * 1024  # an answer read whole (embeddings of many inputs are the largest)
IDLE_S = 3.0  # shorter than llama-server's 5 s keep-alive, so a kept connection is rarely one it is closing
MAX_IDLE = 16  # idle connections kept per origin
DNS_TTL_S = 10.0  # a host name's addresses are looked up again after this long (aiohttp's default too)


class Answer:
    """A response whose status and headers are read; its body to read whole or iterate."""

    def __init__(self, conn: Connection, pool: Upstream, then: Callable[[], None] | None = None) -> None:
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
        self._idle: dict[tuple[object, ...], deque[Connection]] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._addresses: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._spares: dict[tuple[object, ...], asyncio.Task[Connection]] = {}  # connects under way, per origin

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
        head = request_head(method, target, where.authority, headers or {}, size)
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

    def _prepared(self, key: tuple[object, ...], task: asyncio.Task[Connection]) -> None:
        ours = self._spares.get(key) is task  # not when the pool closed meanwhile
        if ours:
            del self._spares[key]
        if task.cancelled() or task.exception() is not None:  # no loss: the next request connects itself
            return
        if ours:
            self.keep(task.result())
        else:
            task.result().abort()

    async def _exchange(self, conn: Connection, head: bytes, body: Body, method: str,
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

    def _kept(self, key: tuple[object, ...]) -> Connection | None:
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

    def keep(self, conn: Connection) -> None:
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

    def _expire(self, conn: Connection) -> None:
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

    async def _connect(self, where: Origin, context: ssl.SSLContext | None, key: tuple[object, ...]) -> Connection:
        loop = asyncio.get_running_loop()
        addresses = await self._resolve(where)
        failure: OSError = OSError(errno.EHOSTUNREACH, f"no address for {where.host}")
        for family, address in addresses:
            sock = tcp_socket(family, self._user_timeout_s)
            try:
                async with asyncio.timeout(self._connect_s):
                    await loop.sock_connect(sock, address)
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, key), sock=sock, ssl=context,
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
