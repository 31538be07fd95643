"""The relay of a spread's RPC channel (rbee/hive/rpc_channel.py has the channel ends, their certificates
and what they may reach): a connection to one end's server joined to the connection that end makes.

The relay moves bytes unchanged with asyncio protocols (no task or copy per chunk: each read is written to
the other transport, and a full write buffer pauses reading on the other side); TCP_NODELAY on every socket
(RPC is latency-bound: several small messages per token), TCP keepalive and a user timeout on the LAN side
so a cut peer is noticed in seconds. When either side of a connection closes, the other is closed; closing
a channel closes its connections; a dead peer hive's end closes, so llama-server sees an error, not a hang.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from rbee.hive.rpc_channel import Channel

log = logging.getLogger(__name__)

WRITE_BUFFER = 4 << 20  # per transport: what may queue before reading from the other side pauses
PENDING_MAX = 4 << 20  # bytes held for a side whose partner is still connecting
KEEPALIVE = (5, 2, 3)  # idle s, interval s, probes: a silent peer is dropped after about 11 s
USER_TIMEOUT_MS = 15_000  # unacknowledged data for this long: the peer is gone


def _tune(transport: asyncio.BaseTransport, lan: bool) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if lan:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), KEEPALIVE, strict=True):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    cast(asyncio.WriteTransport, transport).set_write_buffer_limits(high=WRITE_BUFFER)


class Pipe(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes to its partner's transport, unchanged."""

    def __init__(self, conn: Connection, lan: bool) -> None:
        self.conn, self.lan = conn, lan
        self.transport: asyncio.Transport | None = None
        self.partner: Pipe | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        _tune(transport, self.lan)
        if self is self.conn.first:  # a connection to this end's server
            self.conn.channel.begin(self.conn, self.transport)

    def data_received(self, data: bytes) -> None:
        partner = self.partner
        if partner is not None and partner.transport is not None:
            partner.transport.write(data)
            return
        self.pending.append(data)  # the partner is still connecting (microseconds on loopback)
        self.pending_bytes += len(data)
        if self.transport is not None:  # again: uvloop may start reading after connection_made paused it
            self.transport.pause_reading()
        if self.pending_bytes > PENDING_MAX:
            log.warning("channel %s: more than %d bytes came before the other side was reached; closed",
                        self.conn.channel.id, PENDING_MAX)
            self.conn.close(abort=True)

    def eof_received(self) -> bool:
        return False  # the transport closes, connection_lost closes the partner

    def pause_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.conn.closed:
            log.info("channel %s: a connection's %s side failed: %s", self.conn.channel.id,
                     "LAN" if self.lan else "loopback", str(exc)[:200] or type(exc).__name__)
            if self.lan:
                self.conn.channel.broke(exc)
        self.conn.close()


class Connection:
    """A relayed connection: two pipes joined; either one ending ends both."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.first = Pipe(self, lan=channel.role == "listen")  # the side that connected to this hive
        self.second = Pipe(self, lan=channel.role == "dial")  # the side this hive connected to
        self.closed = False

    def join(self) -> None:
        self.first.partner, self.second.partner = self.second, self.first
        for pipe in (self.first, self.second):
            held, pipe.pending, pipe.pending_bytes = pipe.pending, [], 0
            if held and pipe.partner is not None and pipe.partner.transport is not None:
                pipe.partner.transport.write(b"".join(held))
        for pipe in (self.first, self.second):
            if pipe.transport is not None:
                pipe.transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.channel.connections.discard(self)
        for pipe in (self.first, self.second):
            if pipe.transport is not None:
                pipe.transport.abort() if abort else pipe.transport.close()
