"""The private channel that carries llama.cpp RPC traffic between the hives of one spread.

llama.cpp's `rpc-server` has no authentication and no encryption (its docs: never expose it), so on a
helper hive it listens on 127.0.0.1 only and the hives carry its bytes between themselves:

    main hive                                                    helper hive
    llama-server --rpc 127.0.0.1:P ──> dial end 127.0.0.1:P ══TLS══> listen end ADDR:Q ──> rpc-server 127.0.0.1:T

* **listen** (helper): a TLS server on the hive's own address (ADDR; the port is the kernel's) that completes
  mutual TLS (a client without the pinned certificate fails the handshake there), then takes the connection
  only from the dialer's address, and relays it to 127.0.0.1:T, a port that a process this hive started
  listens on, on loopback (its rpc-server).
* **dial** (main): a TCP server on 127.0.0.1 (the answer's port P) that relays each local connection over
  TLS to the listen end.

Authentication is mutual TLS 1.3 with certificates pinned per spread: the queen makes a key and a
self-signed certificate for each end of each spread (rbee.common.tls_ca.channel_pair, the only place that
needs `cryptography`), gives each hive its own pair and the other end's certificate over the queen->hive
API (the join token), and each end accepts that exact certificate and nothing else (it is the only trust
anchor, VERIFY_X509_PARTIAL_CHAIN, and its DER is compared after the handshake). A certificate the
cluster CA issued, another spread's, or none: the handshake fails and the target sees no connection. No
host name is checked: the pinned certificate is the identity.

What a holder of the join token (the queen, or whoever stole it) can make a hive do, and no more:
listen relays only to a loopback port that a process started by this hive listens on at 127.0.0.1 (so no
other loopback service of the machine becomes reachable from the LAN, nor the hive's own API), checked when
the channel opens and again for each connection; dial connects only to a LAN address (not loopback,
unspecified or multicast), never to this hive's own API, and only completes when the far end shows the
pinned certificate. At most MAX_CHANNELS channels and MAX_CONNECTIONS connections per channel.

The relay that joins a connection to an end with the connection the end makes moves bytes unchanged, and
closes both when either closes: rbee/hive/channel_relay.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from rbee.common.daemon import same_address
from rbee.contracts.spreads import ChannelInfo, ChannelOpen
from rbee.hive.channel_relay import Connection

log = logging.getLogger(__name__)

MAX_CHANNELS = 64
MAX_CONNECTIONS = 64  # per channel; ggml's RPC client keeps one connection per server
HANDSHAKE_S = 10.0

TargetCheck = Callable[[int], Awaitable[bool]]


class ChannelRefused(ValueError):
    """The caller asked for a channel this hive will not open; `status` and `param` for the answer."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str = "invalid_channel"):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def _der(pem: str, what: str) -> bytes:
    try:
        return ssl.PEM_cert_to_DER_cert(pem.strip())
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ChannelRefused(f"'{what}' is not one PEM certificate ({exc})", param=what) from None


def tls_context(asked: ChannelOpen, server_side: bool) -> ssl.SSLContext:
    """Mutual TLS 1.3 that accepts the peer's exact certificate only (blocking: the key goes through a private
    temporary file for the ssl module, removed at once)."""
    peer = _der(asked.peer_certificate, "peer_certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the pinned certificate is the identity, not a name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the peer's leaf is the only trust anchor
    try:
        ctx.load_verify_locations(cadata=peer)
    except ssl.SSLError as exc:
        raise ChannelRefused(f"'peer_certificate' cannot be used ({exc.reason or exc})", param="peer_certificate") \
            from None
    _der(asked.certificate, "certificate")
    with tempfile.TemporaryDirectory(prefix="rbee-channel-") as folder:  # mode 700
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(asked.key.get_secret_value())
        cert.write_text(asked.certificate)
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as exc:
            raise ChannelRefused("'certificate' and 'key' are not a PEM certificate and its private key",
                                 param="key") from exc
    return ctx


def _listening_here(port: int) -> bool:
    """Whether a process this hive started listens on 127.0.0.1:`port` (blocking: reads /proc)."""
    import psutil  # here, not at the top: asked only when a spread's channel opens

    for child in psutil.Process().children(recursive=True):
        try:
            conns = child.net_connections("tcp") if hasattr(child, "net_connections") else child.connections("tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.laddr.ip == "127.0.0.1"
               for c in conns):
            return True
    return False


async def started_here(port: int) -> bool:
    return await asyncio.to_thread(_listening_here, port)


class Channel:
    """One end of one spread's channel: its server, its context and its open connections."""

    def __init__(self, asked: ChannelOpen, ctx: ssl.SSLContext, target_check: TargetCheck) -> None:
        self.id = f"chan-{secrets.token_hex(8)}"
        self.asked, self.ctx, self.target_check = asked, ctx, target_check
        self.role: Literal["listen", "dial"] = asked.role
        self.peer_der = _der(asked.peer_certificate, "peer_certificate")
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        self.broken: str | None = None

    def broke(self, exc: BaseException) -> None:
        """A connection's LAN side failed (not closed by its peer): the first such failure is kept."""
        if self.broken is None:
            self.broken = (f"a connection to {self.asked.peer_address} failed: " if self.role == "dial" else
                           f"the connection from {self.asked.peer_address} failed: ") + \
                (str(exc)[:200] or type(exc).__name__)

    async def start(self, host: str) -> int:
        loop = asyncio.get_running_loop()
        if self.role == "listen":  # TLS from the first byte; connection_made sees the handshake's result
            self.server = await loop.create_server(self._accepted, host, 0, backlog=MAX_CONNECTIONS, ssl=self.ctx,
                                                   ssl_handshake_timeout=HANDSHAKE_S)
        else:
            self.server = await loop.create_server(self._accepted, host, 0, backlog=MAX_CONNECTIONS)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def info(self) -> ChannelInfo:
        assert self.server is not None
        a = self.asked
        return ChannelInfo(channel_id=self.id, role=a.role, spread=a.spread, port=self.server.sockets[0]
                           .getsockname()[1], peer_address=a.peer_address, peer_port=a.peer_port,
                           target_port=a.target_port, connections=len(self.connections), refused=self.refused,
                           broken=self.broken)

    def _accepted(self) -> asyncio.Protocol:
        return Connection(self).first

    def refuse(self, transport: asyncio.Transport, why: str) -> None:
        self.refused += 1
        peer = transport.get_extra_info("peername") or ("?", 0)
        log.warning("channel %s (spread %s, %s) refused a connection from %s: %s", self.id, self.asked.spread,
                    self.role, peer[0], why)
        transport.abort()

    def begin(self, conn: Connection, transport: asyncio.Transport) -> None:
        """A connection arrived on this end's server: check its source, then hand it to a task."""
        peer = transport.get_extra_info("peername") or ("", 0)
        if len(self.connections) >= MAX_CONNECTIONS:
            return self.refuse(transport, f"already {MAX_CONNECTIONS} connections")
        if self.role == "listen" and not same_address(peer[0], self.asked.peer_address):
            return self.refuse(transport, f"not from the spread's peer {self.asked.peer_address}")
        if self.role == "listen":
            try:
                self._pinned(transport)
            except ChannelRefused as exc:
                return self.refuse(transport, str(exc))
        transport.pause_reading()  # nothing is read until the target (listen) or the peer (dial) is reached
        self.connections.add(conn)
        task = asyncio.get_running_loop().create_task(self._relay(conn, transport), name=f"{self.id}-conn")
        self.tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("channel %s: a connection's set-up failed", self.id, exc_info=task.exception())

    async def _relay(self, conn: Connection, transport: asyncio.Transport) -> None:
        try:
            if self.role == "listen":
                await self._listen_side(conn, transport)
            else:
                await self._dial_side(conn, transport)
        except (OSError, ssl.SSLError, TimeoutError, ChannelRefused) as exc:
            self.refused += 1
            if self.role == "dial" and not isinstance(exc, ChannelRefused):
                self.broke(exc)  # the listen end could not be reached
            log.warning("channel %s (spread %s, %s): connection closed: %s", self.id, self.asked.spread, self.role,
                        str(exc)[:200] or type(exc).__name__)
            conn.close(abort=True)
        except BaseException:
            conn.close(abort=True)
            transport.abort()
            raise

    def _pinned(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.getpeercert(binary_form=True) != self.peer_der:
            raise ChannelRefused("the peer's certificate is not the pinned one")

    async def _listen_side(self, conn: Connection, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        port = self.asked.target_port
        assert port is not None
        if not await self.target_check(port):
            raise ChannelRefused(f"nothing this hive started listens on 127.0.0.1:{port} any more")
        await loop.create_connection(lambda: conn.second, "127.0.0.1", port)
        if conn.closed:
            raise ChannelRefused("the peer went away while the target was reached")
        conn.join()

    async def _dial_side(self, conn: Connection, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        conn.first.transport = transport
        port = self.asked.peer_port
        assert port is not None
        remote, _ = await loop.create_connection(lambda: conn.second, self.asked.peer_address, port,
                                                 ssl=self.ctx, server_hostname="", ssl_handshake_timeout=HANDSHAKE_S)
        self._pinned(remote)
        if conn.closed:
            raise ChannelRefused("the local client went away while the peer was reached")
        conn.join()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close(abort=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


class Channels:
    """A hive's open channel ends, by id: what `POST /v1/hive/channels` opens and its status lists."""

    def __init__(self, address: str, target_check: TargetCheck = started_here) -> None:
        self.address = address  # where listen ends bind: the hive's own address (its LAN address when remote)
        self.target_check = target_check
        self._open: dict[str, Channel] = {}

    def infos(self) -> list[ChannelInfo]:
        return [channel.info() for channel in self._open.values()]

    async def open(self, asked: ChannelOpen, api_port: int | None = None) -> ChannelInfo:
        """Open one end (ChannelRefused says why not); `api_port`: the hive's own API, never a target."""
        await self._check(asked, api_port)
        if len(self._open) >= MAX_CHANNELS:
            raise ChannelRefused(f"this hive has {MAX_CHANNELS} channels open; close some first", status=429,
                                 code="too_many_channels")
        ctx = await asyncio.to_thread(tls_context, asked, asked.role == "listen")
        channel = Channel(asked, ctx, self.target_check)
        port = await channel.start(self.address if asked.role == "listen" else "127.0.0.1")
        self._open[channel.id] = channel
        log.info("channel %s (spread %s): %s on port %d, peer %s", channel.id, asked.spread, asked.role, port,
                 asked.peer_address)
        return channel.info()

    async def _check(self, asked: ChannelOpen, api_port: int | None) -> None:
        address = ipaddress.ip_address(asked.peer_address)
        if address.is_unspecified or address.is_multicast:
            raise ChannelRefused(f"'peer_address' {address} is not one machine's address", param="peer_address")
        if asked.role == "listen":
            port = asked.target_port
            if port is None or asked.peer_port is not None:
                raise ChannelRefused("a listen channel takes 'target_port' (where its rpc-server listens on "
                                     "127.0.0.1) and no 'peer_port'", param="target_port")
            if port == api_port or not await self.target_check(port):
                raise ChannelRefused(f"nothing this hive started listens on 127.0.0.1:{port}: a listen channel "
                                     "relays only to an rpc-server of this hive", status=403, param="target_port",
                                     code="forbidden_target")
            return
        if asked.peer_port is None or asked.target_port is not None:
            raise ChannelRefused("a dial channel takes 'peer_port' (the listen end's port on 'peer_address') and no "
                                 "'target_port'", param="peer_port")
        if address.is_loopback:
            raise ChannelRefused("a dial channel goes to another hive's address, not to loopback", status=403,
                                 param="peer_address", code="forbidden_target")
        if same_address(asked.peer_address, self.address) and asked.peer_port == api_port:
            raise ChannelRefused("a dial channel cannot go to this hive's own API", status=403, param="peer_port",
                                 code="forbidden_target")

    async def close(self, channel_id: str) -> ChannelInfo | None:
        """Close one end and every connection through it; None when there is no such channel."""
        channel = self._open.pop(channel_id, None)
        if channel is None:
            return None
        info = channel.info()
        await channel.close()
        log.info("channel %s (spread %s) closed", channel_id, channel.asked.spread)
        return info

    async def close_all(self) -> None:
        for channel_id in list(self._open):
            await self.close(channel_id)
