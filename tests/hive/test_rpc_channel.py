"""The RPC channel between the hives of a spread (rbee/hive/rpc_channel.py), opened through the hive API.

A real echo server (tests/fixtures/echo_server.py) stands in for rpc-server: a child process of this process,
which plays both hives (the helper's listen end and the main's dial end) on this machine's LAN address, called
through ASGI with their join tokens as the queen calls them. The kill test runs the dial end in a real hive
process (`rbee hive-agent run`). Attackers are third parties on the network, and a holder of a join token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from rbee.common import tls_ca
from rbee.contracts.spreads import ChannelInfo, ChannelOpen
from rbee.hive.app import create_app
from rbee.hive.config import HiveConfig, save
from rbee.hive.service import Hive
from tests.conftest import free_port

TOKEN = "join-token-of-the-hive"
API_PORT = 7835  # what HiveConfig says by default: the hive's own API, never a channel's target


def lan_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return None


LAN = lan_address() or ""
pytestmark = [
    pytest.mark.skipif(not LAN, reason="a channel runs between machines: this one has no LAN address"),
    # pytest-asyncio 1.x would have a hook in a conftest instead; >= 0.23 (pyproject) knows only this fixture
    pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture:DeprecationWarning"),
]


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each test on asyncio's own loop and on uvloop, which a hive runs under uvicorn (their transports differ)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.EventLoopPolicy()  # type: ignore[no-any-return]
    return asyncio.DefaultEventLoopPolicy()


@dataclass
class Echo:
    proc: asyncio.subprocess.Process
    port: int

    async def line(self, seconds: float = 15) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), seconds)).decode().strip()


@contextlib.asynccontextmanager
async def echo_server(host: str = "127.0.0.1") -> AsyncIterator[Echo]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.fixtures.echo_server", host,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        yield Echo(proc, int(first[1]))
    finally:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    async with echo_server() as server:
        yield server


@dataclass
class Pair:
    cert: bytes
    key: bytes


class Ends:
    """The helper hive (listen end) and the main hive (dial end), in this process."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.helper = Hive("helper", state=tmp / "helper", address=LAN)
        self.main = Hive("main", state=tmp / "main", address=LAN)
        self.apps = {hive: create_app(HiveConfig(alias=hive.alias, queen_url="http://127.0.0.1:9", token=TOKEN,
                                                 address=LAN), hive) for hive in (self.helper, self.main)}

    async def call(self, hive: Hive, method: str, path: str, body: str | None = None,
                   token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.apps[hive]), base_url="http://hive",
                                     headers=headers) as client:
            return await client.request(method, path, content=body)

    async def open(self, hive: Hive, asked: ChannelOpen) -> ChannelInfo:
        resp = await self.call(hive, "POST", "/v1/hive/channels", asked.model_dump_json())
        assert resp.status_code == 201, resp.text
        return ChannelInfo.model_validate_json(resp.content)

    async def spread(self, target: int, spread: str = "s1") -> tuple[ChannelInfo, ChannelInfo, Pair, Pair]:
        """Both ends of one spread's channel, as the queen opens them: (listen, dial, helper's pair, main's)."""
        helper, main = Pair(*tls_ca.channel_pair(spread, "helper")), Pair(*tls_ca.channel_pair(spread, "main"))
        listen = await self.open(self.helper, listen_asked(helper, main, target, spread))
        dial = await self.open(self.main, ChannelOpen(
            role="dial", spread=spread, certificate=main.cert.decode(), key=main.key.decode(),
            peer_certificate=helper.cert.decode(), peer_address=LAN, peer_port=listen.port))
        return listen, dial, helper, main


def listen_asked(own: Pair, peer: Pair, target: int, spread: str = "s1") -> ChannelOpen:
    return ChannelOpen(role="listen", spread=spread, certificate=own.cert.decode(), key=own.key.decode(),
                       peer_certificate=peer.cert.decode(), peer_address=LAN, target_port=target)


@pytest.fixture
async def ends(tmp_path: Path) -> AsyncIterator[Ends]:
    made = Ends(tmp_path)
    yield made
    await made.helper.channels.close_all()
    await made.main.channels.close_all()


async def through(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `payload` to host:port while reading as much back; what came back."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async def send() -> None:
            writer.write(payload)
            await writer.drain()
        sender = asyncio.create_task(send())
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
        await sender
        return got
    finally:
        writer.close()


async def test_bytes_cross_both_ways_unchanged_large_and_many_small(ends: Ends, echo: Echo) -> None:
    _, dial, _, _ = await ends.spread(echo.port)
    big = os.urandom(16 << 20)
    assert await through(dial.port, big) == big
    reader, writer = await asyncio.open_connection("127.0.0.1", dial.port)
    for i in range(300):  # ping-pong of small messages, each answered before the next is sent
        message = i.to_bytes(2, "big") * (1 + i % 32)
        writer.write(message)
        assert await asyncio.wait_for(reader.readexactly(len(message)), 15) == message
    writer.close()


async def test_the_status_lists_channels_and_closing_one_closes_its_connections(ends: Ends, echo: Echo) -> None:
    listen, dial, _, _ = await ends.spread(echo.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", dial.port)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), 15) == b"hello"
    report = (await ends.call(ends.helper, "GET", "/v1/hive/report")).json()
    assert [(c["channel_id"], c["role"], c["connections"]) for c in report["channels"]] == \
        [(listen.channel_id, "listen", 1)]
    closed = await ends.call(ends.helper, "DELETE", f"/v1/hive/channels/{listen.channel_id}")
    assert closed.status_code == 200 and closed.json()["spread"] == "s1"
    assert await echo.line() == "accepted" and await echo.line() == "closed"  # the target's connection ends
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 15) == b""  # and the client's: an end, not a hang
    assert (await ends.call(ends.helper, "GET", "/v1/hive/report")).json()["channels"] == []
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(LAN, listen.port)


def attacker_context(tmp: Path, pair: tuple[bytes, bytes] | None) -> ssl.SSLContext:
    """A client that checks nothing of the server and shows `pair` (or no certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if pair is not None:
        (tmp / "a.pem").write_bytes(pair[0])
        (tmp / "a.key").write_bytes(pair[1])
        ctx.load_cert_chain(tmp / "a.pem", tmp / "a.key")
    return ctx


def tls12(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def attack(port: int, ctx: ssl.SSLContext | None, source: str = "") -> bytes:
    """Connect as a third party, send a request and read; what came back (nothing, if refused)."""
    try:
        reader, writer = await asyncio.open_connection(LAN, port, ssl=ctx, server_hostname="" if ctx else None,
                                                       local_addr=(source, 0) if source else None)
        writer.write(b"\x00" * 8 + b"GET /v1/hive/report HTTP/1.1\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        return got
    except (ssl.SSLError, ConnectionError):
        return b""


async def only_a_legitimate_connection_reached(echo: Echo, dial_port: int) -> None:
    """The target's log, up to the end of one real connection: nothing of the attacks before it."""
    assert await through(dial_port, b"ping") == b"ping"
    assert [await echo.line(), await echo.line()] == ["accepted", "closed"]


async def test_a_third_party_cannot_complete_a_handshake_nor_reach_the_target(ends: Ends, echo: Echo,
                                                                             tmp_path: Path) -> None:
    listen, dial, _, main = await ends.spread(echo.port)
    other_spread = Pair(*tls_ca.channel_pair("s2", "main"))
    await ends.open(ends.helper, listen_asked(Pair(*tls_ca.channel_pair("s2", "helper")), other_spread, echo.port,
                                              "s2"))
    tls_ca.ensure_ca(tmp_path / "ca")
    cluster_cert = tls_ca.issue("rbee hive other", [LAN], tmp_path / "ca")  # the cluster CA's, for another hive
    attempts = {
        "plain TCP and garbage": await attack(listen.port, None),
        "TLS without a certificate": await attack(listen.port, attacker_context(tmp_path, None)),
        "a certificate of the cluster CA": await attack(listen.port, attacker_context(tmp_path, cluster_cert)),
        "the dialer's certificate of another spread": await attack(
            listen.port, attacker_context(tmp_path, (other_spread.cert, other_spread.key))),
        "the right certificate over TLS 1.2": await attack(listen.port, tls12(attacker_context(tmp_path, (
            main.cert, main.key)))),
        "the right certificate from another address": await attack(
            listen.port, attacker_context(tmp_path, (main.cert, main.key)), source="127.0.0.1"),
    }
    assert attempts == dict.fromkeys(attempts, b"")
    await only_a_legitimate_connection_reached(echo, dial.port)
    report = (await ends.call(ends.helper, "GET", "/v1/hive/report")).json()
    assert next(c for c in report["channels"] if c["channel_id"] == listen.channel_id)["refused"] == 1  # the last


async def test_a_dial_end_relays_nothing_to_a_listener_without_the_pinned_certificate(ends: Ends) -> None:
    received: list[bytes] = []
    impostor = Pair(*tls_ca.channel_pair("s1", "helper"))  # right spread name, not the certificate pinned
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (ends.tmp / "i.pem").write_bytes(impostor.cert)
    (ends.tmp / "i.key").write_bytes(impostor.key)
    ctx.load_cert_chain(ends.tmp / "i.pem", ends.tmp / "i.key")

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            received.append(await reader.read())
        writer.close()

    server = await asyncio.start_server(record, LAN, 0, ssl=ctx)
    helper, main = Pair(*tls_ca.channel_pair("s1", "helper")), Pair(*tls_ca.channel_pair("s1", "main"))
    dial = await ends.open(ends.main, ChannelOpen(
        role="dial", spread="s1", certificate=main.cert.decode(), key=main.key.decode(),
        peer_certificate=helper.cert.decode(), peer_address=LAN, peer_port=server.sockets[0].getsockname()[1]))
    reader, writer = await asyncio.open_connection("127.0.0.1", dial.port)
    writer.write(b"a tensor to set")
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 15) == b""
    server.close()
    await server.wait_closed()
    assert b"a tensor to set" not in b"".join(received)
    (shown,) = [c for c in ends.main.channels.infos() if c.channel_id == dial.channel_id]
    assert shown.broken is not None and shown.broken.startswith(f"a connection to {LAN} failed: "), shown


async def test_the_dial_port_is_on_loopback_only(ends: Ends, echo: Echo) -> None:
    _, dial, _, _ = await ends.spread(echo.port)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(LAN, dial.port)


async def refusal(ends: Ends, hive: Hive, body: str, token: str | None = TOKEN) -> tuple[int, str]:
    resp = await ends.call(hive, "POST", "/v1/hive/channels", body, token=token)
    assert "Traceback" not in resp.text
    return resp.status_code, resp.json()["error"]["message"]


async def test_a_token_holder_cannot_make_a_listen_end_relay_to_what_the_hive_did_not_start(ends: Ends) -> None:
    helper, main = Pair(*tls_ca.channel_pair("s1", "helper")), Pair(*tls_ca.channel_pair("s1", "main"))
    mine = socket.create_server(("127.0.0.1", 0))  # a loopback service of this machine that the hive did not start
    try:
        status, message = await refusal(ends, ends.helper,
                                        listen_asked(helper, main, mine.getsockname()[1]).model_dump_json())
        assert status == 403 and "nothing this hive started listens" in message
    finally:
        mine.close()
    status, message = await refusal(ends, ends.helper, listen_asked(helper, main, API_PORT).model_dump_json())
    assert status == 403
    async with echo_server("0.0.0.0") as open_to_all:  # started here, but not on loopback: not an rpc-server's
        status, _ = await refusal(ends, ends.helper, listen_asked(helper, main, open_to_all.port).model_dump_json())
        assert status == 403
    assert ends.helper.channels.infos() == []


def dial_body(address: str, port: int | None = 40000, **update: object) -> str:
    helper, main = Pair(*tls_ca.channel_pair("s1", "helper")), Pair(*tls_ca.channel_pair("s1", "main"))
    asked = ChannelOpen(role="dial", spread="s1", certificate=main.cert.decode(), key=main.key.decode(),
                        peer_certificate=helper.cert.decode(), peer_address=address, peer_port=port)
    return json.dumps({**asked.model_dump(mode="json"), **update})


@pytest.mark.parametrize(("body", "status", "words"), [
    (dial_body("127.0.0.1"), 403, "not to loopback"),
    (dial_body(LAN or "10.0.0.1", API_PORT), 403, "own API"),
    (dial_body("0.0.0.0"), 400, "not one machine's address"),
    (dial_body("224.0.0.1"), 400, "not one machine's address"),
    (dial_body("10.0.0.9", None), 400, "takes 'peer_port'"),
    (dial_body("10.0.0.9", target_port=5000), 400, "no 'target_port'"),
    (dial_body("10.0.0.9", role="listen", target_port=5000), 400, "no 'peer_port'"),
    (dial_body("10.0.0.9", peer_certificate="not a certificate"), 400, "not one PEM certificate"),
    (dial_body("10.0.0.9", key=Pair(*tls_ca.channel_pair("x", "y")).key.decode()), 400, "its private key"),
    (dial_body("10.0.0.9", certificate="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"), 400, "PEM"),
    (dial_body("10.0.0.9", peer_address="my.host.example"), 400, "Invalid value for 'peer_address'"),
    (dial_body("10.0.0.9", spread="../x"), 400, "Invalid value for 'spread'"),
    ('{"role": "relay"}', 400, "Invalid value for 'role'"),
])
async def test_bad_channel_requests_get_a_clear_error(ends: Ends, body: str, status: int, words: str) -> None:
    got, message = await refusal(ends, ends.main, body)
    assert (got, words in message) == (status, True), message
    assert ends.main.channels.infos() == []


async def test_channels_need_the_join_token_and_unknown_ones_are_404(ends: Ends) -> None:
    assert (await refusal(ends, ends.main, dial_body("10.0.0.9"), token=None))[0] == 401
    assert (await refusal(ends, ends.main, dial_body("10.0.0.9"), token="a guess"))[0] == 401
    gone = await ends.call(ends.main, "DELETE", "/v1/hive/channels/chan-0000000000000000")
    assert gone.status_code == 404 and "no channel" in gone.json()["error"]["message"]


async def test_killing_the_dial_ends_hive_closes_the_listen_ends_connections(ends: Ends, echo: Echo,
                                                                            tmp_path: Path, llama_server: Path) -> None:
    home, port = tmp_path / "home", free_port()
    save(HiveConfig(alias="main", queen_url="http://127.0.0.1:9", token=TOKEN, address=LAN, port=port),
         home / "config" / "hive.toml")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}, "RBEE_HOME": str(home),
           "RBEE_LLAMA_SERVER": str(llama_server)}
    with (tmp_path / "hive.log").open("wb") as log_file:  # what the hive said, for a failure's post-mortem
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rbee", "hive-agent", "run", env=env,
                                                    stderr=log_file)
    try:
        async with httpx.AsyncClient(base_url=f"http://{LAN}:{port}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as main:
            for _ in range(600):  # its API answers once it has started (a process exit fails at once)
                assert proc.returncode is None
                with contextlib.suppress(httpx.TransportError):
                    if (await main.get("/v1/hive/report")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            helper_pair, main_pair = Pair(*tls_ca.channel_pair("s1", "helper")), Pair(*tls_ca.channel_pair("s1", "m"))
            listen = await ends.open(ends.helper, listen_asked(helper_pair, main_pair, echo.port))
            opened = await main.post("/v1/hive/channels", content=ChannelOpen(
                role="dial", spread="s1", certificate=main_pair.cert.decode(), key=main_pair.key.decode(),
                peer_certificate=helper_pair.cert.decode(), peer_address=LAN, peer_port=listen.port)
                .model_dump_json())
            assert opened.status_code == 201, opened.text
        reader, writer = await asyncio.open_connection("127.0.0.1", opened.json()["port"])
        writer.write(b"layer 0")
        assert await asyncio.wait_for(reader.readexactly(7), 15) == b"layer 0"
        assert await echo.line() == "accepted"
        proc.send_signal(signal.SIGKILL)
        assert await echo.line(seconds=20) == "closed"  # the helper's side let go of the target
        assert ends.helper.channels.infos()[0].connections == 0
        writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_client_that_sends_at_once_waits_for_the_peer_instead_of_being_buffered(ends: Ends, echo: Echo) -> None:
    """llama-server writes as soon as it connects; the dial end reads none of it until the peer is reached
    (uvloop may start reading after connection_made paused it: the channel pauses again)."""
    listen, _, helper, main = await ends.spread(echo.port)
    hello, release = asyncio.Event(), asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1 << 16)  # the dial end's ClientHello, held until released
        hello.set()
        await release.wait()
        up_reader, up_writer = await asyncio.open_connection(LAN, listen.port)
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(1 << 18):
                    dst.write(data)
                    await dst.drain()
            dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    stall = await asyncio.start_server(held, LAN, 0)
    dial = await ends.open(ends.main, ChannelOpen(
        role="dial", spread="s1", certificate=main.cert.decode(), key=main.key.decode(),
        peer_certificate=helper.cert.decode(), peer_address=LAN, peer_port=stall.sockets[0].getsockname()[1]))
    payload = os.urandom(24 << 20)  # far more than the channel holds for a side that is not joined yet
    reader, writer = await asyncio.open_connection("127.0.0.1", dial.port)
    writer.write(payload)
    await asyncio.wait_for(hello.wait(), 15)
    release.set()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 60) == payload
    writer.close()
    stall.close()


async def test_a_listen_end_whose_rpc_server_is_gone_refuses_and_its_port_is_not_relayed_again(ends: Ends) -> None:
    async with echo_server() as gone:
        listen, dial, _, _ = await ends.spread(gone.port)
    with contextlib.suppress(ConnectionError):  # the target is checked again for each connection
        reader, writer = await asyncio.open_connection("127.0.0.1", dial.port)
        writer.write(b"graph")
        assert await asyncio.wait_for(reader.read(), 15) == b""
    report = (await ends.call(ends.helper, "GET", "/v1/hive/report")).json()
    assert next(c for c in report["channels"] if c["channel_id"] == listen.channel_id)["refused"] == 1
