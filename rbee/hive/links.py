"""A hive's side of a link measure: the raw echo another hive measures against, and the measure itself.

The queen measures the link between hives A and B (for a spread across hives, rbee/queen/spread_plan.py)
through the trust path copies use (rbee/hive/shares.py): it opens an echo on B for A's address
(`POST /v1/hive/links/echoes`, B's join token), and B listens on a port of its own address (TLS with the
hive's certificate when the hive has TLS) and answers that port and a random token; it asks A to measure
(`POST /v1/hive/links/measure`, A's join token) with B's address from its registry, the port and the token.
A opens one TCP connection (TCP_NODELAY) and on it sends many one-byte round trips, whose median is the
latency (the network and two event loops: no HTTP stack, no connection set-up), then one bulk transfer,
whose rate is the bandwidth. On one open connection, as llama.cpp's RPC uses its own.

The echo's protocol, on its one connection:

    A -> B   "RBEE-ECHO/1 TOKEN NONCE\\n"        at most HELLO_MAX bytes, within IDLE_S
    B -> A   "PROOF\\n"                           HMAC-SHA256 of the nonce with the token, hex
    A -> B   b"p"          B -> A   b"p"        a round trip; at most MAX_ROUNDS
    A -> B   b"b" SIZE (4 bytes, big-endian), then SIZE bytes (read and dropped; SIZE <= MAX_BULK_BYTES)
    B -> A   b"b" SIZE                          and the echo is gone

What an echo answers, and to whom: a connection from another address than the one the queen named is closed
before one byte is read; a wrong token (the join token, another echo's, a guess) is closed with nothing
written; so is anything but the frames above, a size over the bound, a read that waits more than IDLE_S (a
slow sender), and any connection still open when the echo's life (EchoOpen.expires_s) ends. One connection
at a time, ECHO_TRIES connections at most, then the echo is closed.

What a measure does, so that a measure cannot be turned into a port scanner or a request forger:

    the peer is an address literal (the contract's pattern: no names to resolve) and a port, TLS when this hive
    has TLS (checked against the cluster CA); the first answer must be the token's proof, else nothing more is
    sent and the answer is the same one whatever was there (closed port, another program, a wrong token):
    "did not answer as the hive"; rounds and bulk size are bounded by the contract, the whole measure by
    MEASURE_S; one measure runs at a time on this hive.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import ssl
import statistics
import time
from dataclasses import dataclass, field

from pydantic import SecretStr

from rbee.common.daemon import same_address
from rbee.common.tls import TLSFiles
from rbee.contracts.spread_plans import MAX_BULK_BYTES, MAX_ROUNDS, EchoOpen, EchoOpened, LinkMeasure, LinkMeasured

log = logging.getLogger(__name__)

MAX_ECHOES = 32
ECHO_TRIES = 3  # connections one echo takes (each must bring the token), then it closes
HELLO = b"RBEE-ECHO/1"
HELLO_MAX = 256
IDLE_S = 5.0  # the longest one read of the echo waits: a slow sender is cut there
MEASURE_S = 30.0
CHUNK = 1 << 20

_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_EchoClosed = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError,
               ValueError)


class LinkFailed(Exception):
    """The measure did not happen; the message is the same whatever the peer was (see the module docstring)."""


class _Refused(Exception):
    """An echo's connection that broke the protocol: closed, and the reason logged."""


def proof(token: str, nonce: str) -> str:
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class _Echo:
    id: str
    digest: bytes
    token: str
    peer: str
    expires_at: float  # the event loop's clock
    server: asyncio.Server | None = None
    tries: int = 0
    busy: bool = False
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class Echoes:
    """A hive's open echoes: each a TCP server on `address` for one peer, until used or expired."""

    def __init__(self, address: str, tls: TLSFiles | None = None, idle_s: float = IDLE_S) -> None:
        self.address, self.tls, self.idle_s = address, tls, idle_s
        self._context: ssl.SSLContext | None = None
        self._echoes: dict[str, _Echo] = {}

    async def open(self, asked: EchoOpen) -> EchoOpened:
        if len(self._echoes) >= MAX_ECHOES:
            raise LinkFailed(f"this hive already has {MAX_ECHOES} open echoes; try again in a minute")
        if self.tls is not None and self._context is None:
            self._context = await asyncio.to_thread(self.tls.server_context)
        loop = asyncio.get_running_loop()
        token, echo_id = secrets.token_urlsafe(32), f"echo-{secrets.token_hex(8)}"
        echo = _Echo(echo_id, _digest(token), token, asked.peer_address, loop.time() + asked.expires_s)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(echo, reader, writer)
        echo.server = await asyncio.start_server(accepted, self.address, 0, ssl=self._context,
                                                 ssl_handshake_timeout=self.idle_s if self._context else None)
        self._echoes[echo_id] = echo
        loop.call_at(echo.expires_at, self.close, echo_id)
        port = int(echo.server.sockets[0].getsockname()[1])
        log.info("answering a link echo from %s on port %d as %s for %.0f s", asked.peer_address, port, echo_id,
                 asked.expires_s)
        return EchoOpened(echo_id=echo_id, token=SecretStr(token), port=port)

    def ports(self) -> list[int]:
        """The ports open echoes listen on (for status and tests)."""
        return [int(e.server.sockets[0].getsockname()[1]) for e in self._echoes.values() if e.server is not None]

    def close(self, echo_id: str) -> None:
        echo = self._echoes.pop(echo_id, None)
        if echo is None:
            return
        if echo.server is not None:
            echo.server.close()
        for writer in list(echo.writers):
            writer.transport.abort()

    def close_all(self) -> None:
        for echo_id in list(self._echoes):
            self.close(echo_id)

    async def _serve(self, echo: _Echo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection to an echo: the address, then the token, then the frames; any breach closes it."""
        peer = (writer.get_extra_info("peername") or ("?", 0))[0]
        echo.writers.add(writer)
        mine = False
        try:
            if not same_address(peer, echo.peer):
                raise _Refused(f"it was opened for {echo.peer}")
            if echo.busy or echo.tries >= ECHO_TRIES:
                raise _Refused("busy with another connection" if echo.busy else f"{ECHO_TRIES} connections came")
            echo.tries, echo.busy, mine = echo.tries + 1, True, True
            async with asyncio.timeout_at(echo.expires_at):
                if await self._answer(echo, reader, writer):
                    self.close(echo.id)
        except _Refused as exc:
            log.warning("link echo %s refused a connection from %s: %s", echo.id, peer, exc)
        except _EchoClosed as exc:
            log.warning("link echo %s: the connection from %s ended: %s", echo.id, peer,
                        str(exc)[:200] or type(exc).__name__)
        except Exception:  # a bug, not the peer: logged with its traceback, the connection still closed
            log.exception("link echo %s failed", echo.id)
        finally:
            echo.writers.discard(writer)
            if mine:
                echo.busy = False
            if echo.tries >= ECHO_TRIES:
                self.close(echo.id)
            writer.transport.abort()

    async def _read(self, reader: asyncio.StreamReader, size: int) -> bytes:
        return await asyncio.wait_for(reader.readexactly(size), self.idle_s)

    async def _answer(self, echo: _Echo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """The protocol of the module docstring; True once the bulk transfer is answered."""
        hello = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_s)
        words = hello.strip().split(b" ")
        if len(hello) > HELLO_MAX or len(words) != 3 or words[0] != HELLO:
            raise _Refused("it did not begin with the echo's hello")
        if not hmac.compare_digest(_digest(words[1].decode(errors="replace")), echo.digest):
            raise _Refused("wrong token")
        _nodelay(writer)
        writer.write(proof(echo.token, words[2][:64].decode(errors="replace")).encode() + b"\n")
        rounds = 0
        while True:
            op = await self._read(reader, 1)
            if op == b"p" and rounds < MAX_ROUNDS:
                rounds += 1
                writer.write(b"p")
                continue
            if op != b"b":
                raise _Refused(f"more than {MAX_ROUNDS} round trips" if op == b"p" else f"an unknown frame {op!r}")
            size = int.from_bytes(await self._read(reader, 4), "big")
            if not 0 < size <= MAX_BULK_BYTES:
                raise _Refused(f"a bulk transfer of {size} bytes (at most {MAX_BULK_BYTES})")
            left = size
            while left:
                chunk = await asyncio.wait_for(reader.read(min(CHUNK, left)), self.idle_s)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
            writer.write(b"b" + size.to_bytes(4, "big"))
            await writer.drain()
            return True


_one_at_a_time = asyncio.Lock()


def _host(peer_url: str) -> str:
    return peer_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")


async def measure(source: str, asked: LinkMeasure, context: ssl.SSLContext | None) -> LinkMeasured:
    """Round trips and one bulk transfer against hive `asked.peer`'s echo, from this hive (`source`)."""
    plain = asked.peer_url.startswith("http://")
    if plain and context is not None:
        raise LinkFailed(f"hive '{asked.peer}' was named with a plain http:// URL while this hive uses TLS; "
                         "refused")
    async with _one_at_a_time:
        try:
            async with asyncio.timeout(MEASURE_S):
                return await _measure(source, asked, None if plain else context or ssl.create_default_context())
        except (LinkFailed, *_EchoClosed):
            raise LinkFailed(f"hive '{asked.peer}' at {_host(asked.peer_url)} port {asked.echo_port} did not "
                             "answer as the hive the queen named") from None


async def _connect(asked: LinkMeasure, context: ssl.SSLContext | None) -> _Streams:
    host = _host(asked.peer_url)
    reader, writer = await asyncio.open_connection(host, asked.echo_port, ssl=context,
                                                   server_hostname=host if context else None, limit=HELLO_MAX * 4)
    _nodelay(writer)
    return reader, writer


async def _measure(source: str, asked: LinkMeasure, context: ssl.SSLContext | None) -> LinkMeasured:
    token = asked.token.get_secret_value()
    reader, writer = await _connect(asked, context)
    try:
        nonce = secrets.token_hex(16)
        writer.write(HELLO + f" {token} {nonce}\n".encode())
        if not hmac.compare_digest((await reader.readuntil(b"\n")).strip(), proof(token, nonce).encode()):
            raise LinkFailed("no proof")
        rtts = []
        for _ in range(asked.rounds):
            started = time.perf_counter()
            writer.write(b"p")
            if await reader.readexactly(1) != b"p":
                raise LinkFailed("not an echo")
            rtts.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        writer.write(b"b" + asked.bulk_bytes.to_bytes(4, "big"))
        zeros, left = bytes(CHUNK), asked.bulk_bytes
        while left:
            writer.write(zeros[:min(CHUNK, left)])
            left -= min(CHUNK, left)
            await writer.drain()
        if await reader.readexactly(5) != b"b" + asked.bulk_bytes.to_bytes(4, "big"):
            raise LinkFailed("not an echo")
        took = time.perf_counter() - started
    finally:
        writer.transport.abort()
    rtts.sort()
    return LinkMeasured(source=source, peer=asked.peer, rtt_ms_median=round(statistics.median(rtts), 3),
                        rtt_ms_p90=round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.9))], 3),
                        mbps=round(asked.bulk_bytes / max(took, 1e-6) / 1e6, 1), rounds=asked.rounds,
                        bulk_bytes=asked.bulk_bytes)
