"""The HTTP/1.1 client of the daemons' hops to engines (rbee/common/upstream.py), against a local asyncio server
whose every byte the test writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from rbee.common import upstream_wire
from rbee.common.upstream import BadAnswer, Upstream

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\n"


class Server:
    """A server that answers each connection with `handler`; counts connections and what they asked."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Queue[int]()  # the number of each connection the client closed
        self.opened = asyncio.Queue[int]()  # the number of each connection, as it is accepted
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.opened.put_nowait(number)
        try:
            await self.handler(self, reader, writer)
            while await reader.read(65536):  # until the client closes its side
                pass
            self.closed.put_nowait(number)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.put_nowait(number)
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """Read one request (its head and a Content-Length body)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the daemons run on uvloop, whose transports differ from asyncio's."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.EventLoopPolicy()  # type: ignore[no-any-return]
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        servers.append(await Server(handler).start())
        return servers[-1]

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def pool() -> AsyncIterator[Upstream]:
    client = Upstream(connect_s=2.0, user_timeout_s=2.0)
    yield client
    await client.close()


def keeps_answering(answer: bytes, times: int = 10) -> Handler:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(times):
            await server.request(reader)
            writer.write(answer)
            await writer.drain()
    return handler


async def test_a_body_by_content_length_is_read_and_its_connection_kept_for_the_next_request(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    server = await serve(keeps_answering(OK + b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"))
    for n in range(3):
        answer = await pool.request("POST", f"{server.url}/v1/x", b'{"n": %d}' % n, {"Authorization": "Bearer k"})
        assert (answer.status, answer.headers["content-type"], await answer.read()) == (200, "text/plain", b"hello")
        answer.release()
    assert server.connections == 1
    assert server.requests[2].startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in server.requests[2] and server.requests[2].endswith(b'{"n": 2}')


async def test_chunks_are_handed_on_as_they_arrive_and_trailers_dropped(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    got_first = asyncio.Event()

    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n6;ext=1\r\ndata: \r\n")
        await got_first.wait()  # the client has the first chunk before the second exists
        writer.write(b"3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n")
        await server.request(reader)
        writer.write(OK + b"Content-Length: 2\r\n\r\nok")

    server = await serve(handler)
    answer = await pool.request("POST", server.url, b"{}")
    chunks = []
    async for chunk in answer:
        chunks.append(chunk)
        got_first.set()
    assert chunks == [b"data: ", b"abc"] and answer.at_eof
    answer.release()
    again = await pool.request("POST", server.url, b"{}")
    assert await again.read() == b"ok" and server.connections == 1  # the trailer did not spoil the connection


async def test_an_answer_written_one_byte_at_a_time_is_read_whole(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    raw = OK + b"Transfer-Encoding: chunked\r\nX-A: 1\r\n\r\na\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n"

    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        for i in range(len(raw)):
            writer.write(raw[i:i + 1])
            await writer.drain()

    server = await serve(handler)
    answer = await pool.request("GET", server.url)
    assert answer.headers["x-a"] == "1" and await answer.read() == b"0123456789!"


def test_a_chunk_header_split_across_reads_is_parsed() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = upstream_wire.Connection(loop, ())
        headed = conn.start()
        raw = OK + b"Transfer-Encoding: chunked\r\n\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n"
        for i in range(len(raw)):  # every split there is: one byte per read
            conn.data_received(raw[i:i + 1])
        assert headed.done() and conn.ended and conn.reusable
        assert loop.run_until_complete(conn.next_chunk()) == b"z" * 26
    finally:
        loop.close()


@pytest.mark.parametrize("size", [b"zz", b"-1", b"1 2", b"fffffffffffffffffffff"])
async def test_a_bad_chunk_size_is_a_bad_answer(serve: Callable[[Handler], Awaitable[Server]], pool: Upstream,
                                                size: bytes) -> None:
    server = await serve(keeps_answering(OK + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\nab\r\n", 1))
    answer = await pool.request("POST", server.url, b"{}")
    with pytest.raises(BadAnswer, match="not valid HTTP"):
        await answer.read()
    assert await server.closed.get() == 1  # the connection is dropped, not kept


async def test_an_answer_cut_short_fails_after_what_came(serve: Callable[[Handler], Awaitable[Server]],
                                                         pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        writer.close()

    server = await serve(handler)
    answer = await pool.request("POST", server.url, b"{}")
    assert await answer.__anext__() == b"abc"
    with pytest.raises(ConnectionResetError):
        await answer.__anext__()
    assert not answer.at_eof


async def test_a_length_body_cut_short_is_an_error_not_a_short_body(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"Content-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    server = await serve(handler)
    answer = await pool.request("POST", server.url, b"{}")
    with pytest.raises(ConnectionResetError):
        await answer.read()


async def test_a_peer_that_closes_before_answering_is_an_error(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.close()

    server = await serve(handler)
    with pytest.raises(ConnectionResetError):
        await pool.request("POST", server.url, b"{}")


async def test_a_close_delimited_body_ends_with_the_connection_which_is_not_kept(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"\r\nall of it")
        await writer.drain()
        writer.close()

    server = await serve(handler)
    for _ in range(2):
        answer = await pool.request("POST", server.url, b"{}")
        assert await answer.read() == b"all of it" and answer.at_eof
        answer.release()
    assert server.connections == 2


def answers_then_closes(answer: bytes) -> Handler:
    """llama-server's way with a streamed answer: one request per connection, which it closes after."""
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()
    return handler


async def spares_opened(pool: Upstream) -> None:
    """Until the spare connections under way are open and kept."""
    while pool._spares:
        await asyncio.wait(list(pool._spares.values()))
        await asyncio.sleep(0)  # the done callbacks, which keep them, run next


async def test_a_spare_connection_is_opened_when_an_answer_ends_and_the_next_request_goes_on_it(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    server = await serve(answers_then_closes(OK + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                             b"3\r\nabc\r\n0\r\n\r\n"))
    answer = await pool.request("POST", server.url, b"{}", {"Connection": "close"}, spare=True)
    assert [chunk async for chunk in answer] == [b"abc"] and server.connections == 1
    answer.release()
    assert await asyncio.wait_for(server.opened.get(), 10) == 1
    assert await asyncio.wait_for(server.opened.get(), 10) == 2  # the spare, before any request needs it
    await spares_opened(pool)
    second = await pool.request("POST", server.url, b"{}", {"Connection": "close"})  # no spare asked this time
    assert await second.read() == b"abc"
    second.release()
    assert server.connections == 2 and len(server.requests) == 2  # the second request went on the spare
    await pool.close()  # nothing is left open or opening
    assert sorted([await server.closed.get(), await server.closed.get()]) == [1, 2]


async def test_one_spare_connection_per_origin_at_a_time(serve: Callable[[Handler], Awaitable[Server]],
                                                         pool: Upstream) -> None:
    server = await serve(answers_then_closes(OK + b"Content-Length: 2\r\nConnection: close\r\n\r\nok"))
    answers = [await pool.request("POST", server.url, b"{}", spare=True) for _ in range(3)]
    for answer in answers:  # three answers end at once: one spare is opened, not three
        assert await answer.read() == b"ok"
        answer.release()
    await spares_opened(pool)
    more = [await pool.request("POST", server.url, b"{}", spare=False) for _ in range(2)]
    assert server.connections == 5  # 3, the spare (taken by the first of these), and one more for the second
    for answer in more:
        assert await answer.read() == b"ok"
        answer.release()


async def test_a_spare_the_peer_talks_on_out_of_turn_is_not_used(serve: Callable[[Handler], Awaitable[Server]],
                                                                 pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 2:  # the spare: a hostile worker writes before anything is asked
            writer.write(OK + b"Content-Length: 4\r\n\r\nevil")
            await writer.drain()
            await reader.read(65536)
            return
        await answers_then_closes(OK + b"Content-Length: 2\r\nConnection: close\r\n\r\nok")(server, reader, writer)

    server = await serve(handler)
    answer = await pool.request("POST", server.url, b"{}", spare=True)
    assert await answer.read() == b"ok"
    answer.release()
    await spares_opened(pool)
    closed = {await asyncio.wait_for(server.closed.get(), 10) for _ in range(2)}
    assert closed == {1, 2}  # the first after its answer, the spare as soon as it spoke
    second = await pool.request("POST", server.url, b"{}")
    assert await second.read() == b"ok" and server.connections == 3  # on a new connection, not the spare


async def test_a_spare_that_cannot_connect_is_no_error(serve: Callable[[Handler], Awaitable[Server]],
                                                       pool: Upstream) -> None:
    server = await serve(answers_then_closes(OK + b"Content-Length: 2\r\nConnection: close\r\n\r\nok"))
    answer = await pool.request("POST", server.url, b"{}", spare=True)
    assert await answer.read() == b"ok"
    await server.stop()  # the worker went away: its spare is refused
    answer.release()
    await spares_opened(pool)
    with pytest.raises(ConnectionRefusedError):  # the next request learns it itself, as without a spare
        await pool.request("POST", server.url, b"{}")


async def test_a_kept_connection_the_peer_closed_is_replaced_once(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"Content-Length: 2\r\n\r\nok")  # says nothing of closing, and closes
        await writer.drain()
        writer.close()

    server = await serve(handler)
    first = await pool.request("POST", server.url, b"{}")
    assert await first.read() == b"ok"
    first.release()
    await server.closed.get()  # the server has closed it: the kept connection is stale (or seen lost)
    second = await pool.request("POST", server.url, b"{}")
    assert await second.read() == b"ok" and server.connections == 2


async def test_an_idle_connection_is_closed_after_idle_s(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(keeps_answering(OK + b"Content-Length: 0\r\n\r\n"))
    client = Upstream(connect_s=2.0, idle_s=0.05)
    answer = await client.request("POST", server.url, b"{}")
    assert await answer.read() == b""
    answer.release()
    assert await asyncio.wait_for(server.closed.get(), 10) == 1  # the client closed it, idle


async def test_no_more_than_max_idle_connections_are_kept(serve: Callable[[Handler], Awaitable[Server]]) -> None:
    server = await serve(keeps_answering(OK + b"Content-Length: 0\r\n\r\n"))
    client = Upstream(connect_s=2.0, max_idle=1)
    answers = [await client.request("POST", server.url, b"{}") for _ in range(2)]
    for answer in answers:
        await answer.read()
        answer.release()
    assert await server.closed.get() == 2 and server.closed.empty()  # the second was closed, the first kept
    await client.close()
    assert await server.closed.get() == 1


async def test_endless_headers_are_refused_at_the_bound(serve: Callable[[Handler], Awaitable[Server]],
                                                        pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK)
        while True:  # until the client hangs up
            writer.write(b"X-Padding: " + b"p" * 1000 + b"\r\n")
            await writer.drain()

    server = await serve(handler)
    with pytest.raises(BadAnswer, match=r"headers are over|more than 100 headers"):
        await pool.request("POST", server.url, b"{}")


async def test_one_endless_header_line_is_refused_too(serve: Callable[[Handler], Awaitable[Server]],
                                                      pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"X-Long: ")
        while True:
            writer.write(b"v" * 4096)
            await writer.drain()

    server = await serve(handler)
    with pytest.raises(BadAnswer, match="headers are over"):
        await pool.request("POST", server.url, b"{}")


async def test_too_many_headers_are_refused(serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(upstream_wire.MAX_HEADERS + 1))
    server = await serve(keeps_answering(OK + many + b"Content-Length: 0\r\n\r\n", 1))
    with pytest.raises(BadAnswer, match="more than 100 headers"):
        await pool.request("POST", server.url, b"{}")


async def test_not_http_is_a_bad_answer(serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    server = await serve(keeps_answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 1))
    with pytest.raises(BadAnswer, match="not valid HTTP"):
        await pool.request("POST", server.url, b"{}")


@pytest.mark.parametrize("raw", [OK + b"Content-Length: 2000\r\n\r\n" + b"x" * 2000,
                                 OK + b"Transfer-Encoding: chunked\r\n\r\n" + (b"100\r\n" + b"x" * 256 + b"\r\n") * 8])
async def test_a_whole_answer_over_the_limit_is_refused(serve: Callable[[Handler], Awaitable[Server]],
                                                        pool: Upstream, raw: bytes) -> None:
    server = await serve(keeps_answering(raw, 1))
    answer = await pool.request("POST", server.url, b"{}")
    with pytest.raises(BadAnswer, match="over 1000 bytes"):
        await answer.read(limit=1000)


async def test_closing_mid_stream_ends_the_iteration_and_the_connection(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()

    server = await serve(handler)
    answer = await pool.request("POST", server.url, b"{}")
    assert await answer.__anext__() == b"abc"
    waiting = asyncio.ensure_future(answer.__anext__())
    await asyncio.sleep(0)  # let it wait for the next chunk (none comes)
    answer.close()
    with pytest.raises(ConnectionAbortedError):
        await waiting
    assert await server.closed.get() == 1  # the server saw the connection go: an engine would stop generating


async def test_a_streamed_request_body_is_sent_with_its_length(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    server = await serve(keeps_answering(OK + b"Content-Length: 0\r\n\r\n", 1))

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a" * 100_000, b"b" * 100_000):
            yield part

    answer = await pool.request("PUT", server.url + "/up?x=1", parts(), {"Content-Type": "audio/wav"},
                                length=200_000)
    assert answer.status == 200
    assert server.requests[0].startswith(b"PUT /up?x=1 HTTP/1.1\r\n")
    assert server.requests[0].endswith(b"a" * 100_000 + b"b" * 100_000)


async def test_a_header_with_a_line_break_is_refused_before_sending(pool: Upstream) -> None:
    with pytest.raises(ValueError, match="line break"):
        await pool.request("POST", "http://127.0.0.1:9/", b"", {"X-A": "1\r\nX-Injected: 2"})


@pytest.mark.parametrize("url", ["ftp://host/x", "http:///x", "127.0.0.1:80/x"])
async def test_a_url_that_is_not_http_is_refused(pool: Upstream, url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        await pool.request("POST", url, b"")


async def test_a_port_nobody_listens_on_is_refused(pool: Upstream) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await pool.request("POST", f"http://127.0.0.1:{port}/", b"")


@pytest.mark.parametrize(("url", "authority", "target"), [
    ("http://127.0.0.1:8080/v1/x?a=1", "127.0.0.1:8080", "/v1/x?a=1"),
    ("https://[::1]:7835/v1/workers/w/engine/inference", "[::1]:7835", "/v1/workers/w/engine/inference"),
    ("https://hive.lan", "hive.lan", "/"),
    ("http://hive.lan:80", "hive.lan", "/"),
])
def test_a_url_gives_the_host_header_and_the_target(url: str, authority: str, target: str) -> None:
    where, path = upstream_wire.origin(url)
    assert (where.authority, path) == (authority, target)


async def test_a_host_name_is_resolved_and_its_connection_kept(
        serve: Callable[[Handler], Awaitable[Server]], pool: Upstream) -> None:
    server = await serve(keeps_answering(OK + b"Content-Length: 2\r\n\r\nok"))
    url = server.url.replace("127.0.0.1", "localhost")
    for _ in range(2):
        answer = await pool.request("GET", url)
        assert await answer.read() == b"ok"
        answer.release()
    assert server.connections == 1 and server.requests[1].startswith(b"GET / HTTP/1.1\r\nHost: localhost:")
