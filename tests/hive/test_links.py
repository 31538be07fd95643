"""The echo a link measure runs against (rbee/hive/links.py), on real sockets of this machine's loopback: what it
answers, to whom, and how much it reads; and the measure against it. A hostile peer here is one at the right
address with a valid credential of another kind (the join token, another hive's echo token) or none.
The hive-to-hive path itself runs between real hives in tests/e2e/test_fleet_spreads.py."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rbee.common import tls_ca
from rbee.common.tls import TLSFiles
from rbee.contracts.spread_plans import MAX_BULK_BYTES, MAX_ROUNDS, EchoOpen, EchoOpened, LinkMeasure
from rbee.hive.links import HELLO, Echoes, LinkFailed, measure, proof
from tests.fixtures import echo_talk

PEER = "127.0.0.1"
ELSEWHERE = "127.0.0.2"  # loopback too, but another address than the one the echo was opened for
IDLE_S = 0.5


@pytest.fixture
async def echoes() -> AsyncIterator[Echoes]:
    echoes = Echoes("127.0.0.1", idle_s=IDLE_S)
    yield echoes
    echoes.close_all()


def asked(opened: EchoOpened, token: str | None = None, **extra: int) -> LinkMeasure:
    return LinkMeasure(peer="h2", peer_url="http://127.0.0.1:7835", echo_id=opened.echo_id, echo_port=opened.port,
                       token=token or opened.token.get_secret_value(), **extra)  # type: ignore[arg-type]


async def talk(opened: EchoOpened, sent: bytes, source: str = PEER) -> tuple[bytes, float]:
    """Send `sent` as a measure talks (tests/fixtures/echo_talk.py), then read until the echo closes the
    connection: what it wrote, and how long it took."""
    started = time.monotonic()
    got = await asyncio.to_thread(echo_talk.talk, "127.0.0.1", opened.port, sent, source)
    return got, time.monotonic() - started


def hello(token: str, nonce: str = "n1") -> bytes:
    return HELLO + f" {token} {nonce}\n".encode()


async def test_a_measure_of_loopback_takes_many_round_trips_on_one_connection(echoes: Echoes) -> None:
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    done = await measure("h1", asked(opened, rounds=MAX_ROUNDS, bulk_bytes=4 << 20), None)
    assert done.rounds == MAX_ROUNDS and done.bulk_bytes == 4 << 20
    assert 0 < done.rtt_ms_median <= done.rtt_ms_p90 and done.rtt_ms_median < 5  # no HTTP stack in it
    assert done.mbps > 10
    assert echoes.ports() == []  # used: gone
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", opened.port)


async def test_the_echo_proves_its_token(echoes: Echoes) -> None:
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    token = opened.token.get_secret_value()
    got, _ = await talk(opened, hello(token, "abc") + b"pp" + b"x")  # two round trips, then an unknown frame
    assert got == proof(token, "abc").encode() + b"\n" + b"pp"


@pytest.mark.parametrize("case", ["no token", "wrong token", "join token", "another hive's echo token",
                                  "HTTP", "a hello without an end"])
async def test_a_connection_without_the_echo_token_gets_nothing(echoes: Echoes, case: str) -> None:
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    elsewhere = Echoes("127.0.0.1")  # another hive's echoes
    other = await elsewhere.open(EchoOpen(peer_address=PEER))
    elsewhere.close_all()
    sent = {"no token": HELLO + b"\n", "wrong token": hello("guessed-guessed-guessed"),
            "join token": hello("the-hives-join-token-abcdefghijklmnopqrstuvw"),
            "another hive's echo token": hello(other.token.get_secret_value()),
            "HTTP": b"POST /v1/hive/report HTTP/1.1\r\nHost: h\r\n\r\n",
            "a hello without an end": HELLO + b" " + b"x" * 100_000}[case]
    got, _ = await talk(opened, sent)
    assert got == b""  # closed, not a byte written: no proof, no echo
    done = await measure("h1", asked(opened, rounds=3), None)  # the hive it was opened for still measures
    assert done.rounds == 3


async def test_another_address_is_closed_before_a_byte_is_read(echoes: Echoes) -> None:
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    got, _ = await talk(opened, hello(opened.token.get_secret_value()) + b"p", source=ELSEWHERE)
    assert got == b""
    for _ in range(3):  # those connections spend none of the echo's tries
        assert (await talk(opened, b"", source=ELSEWHERE))[0] == b""
    assert (await measure("h1", asked(opened, rounds=2), None)).rounds == 2


async def test_an_echo_bounds_its_rounds_and_its_bulk_transfer(echoes: Echoes) -> None:
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    token = opened.token.get_secret_value()
    said = proof(token, "n1").encode() + b"\n"
    got, _ = await talk(opened, hello(token) + b"p" * (MAX_ROUNDS + 5))
    assert got == said + b"p" * MAX_ROUNDS  # no more round trips than a measure takes
    got, _ = await talk(opened, hello(token) + b"b" + (MAX_BULK_BYTES + 1).to_bytes(4, "big") + b"\0" * 1000)
    assert got == said  # a bulk over the bound: closed before one byte of it is read
    got, _ = await talk(opened, hello(token) + b"b" + (0).to_bytes(4, "big"))
    assert got == said  # an empty bulk: closed too
    assert echoes.ports() == []  # that was its third connection, its last: the echo is closed
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", opened.port)


async def test_a_slow_sender_is_cut_after_the_idle_bound(echoes: Echoes) -> None:
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    got, took = await talk(opened, HELLO[:5])  # slowloris: the hello begun, never finished
    assert got == b"" and took >= IDLE_S * 0.9
    token = opened.token.get_secret_value()
    got, took = await talk(opened, hello(token) + b"b" + (1 << 20).to_bytes(4, "big") + b"\0" * 1000)
    assert got == proof(token, "n1").encode() + b"\n" and took >= IDLE_S * 0.9  # a bulk that stops coming


async def test_an_open_connection_ends_with_the_echo() -> None:
    echoes = Echoes("127.0.0.1", idle_s=30)  # the echo's life, not the idle bound, ends this one
    try:
        opened = await echoes.open(EchoOpen(peer_address=PEER, expires_s=1.0))
        token = opened.token.get_secret_value()
        got, took = await talk(opened, hello(token))
        assert got == proof(token, "n1").encode() + b"\n" and took < 20
        assert echoes.ports() == []
    finally:
        echoes.close_all()


async def test_a_measure_of_what_is_no_echo_says_the_same_sentence(echoes: Echoes) -> None:
    async def parrot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())  # answers, but not with the token's proof
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(parrot, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opened = await echoes.open(EchoOpen(peer_address=PEER))
    try:
        fake = opened.model_copy(update={"port": port})
        with pytest.raises(LinkFailed) as parrot_said:
            await measure("h1", asked(fake), None)
        with pytest.raises(LinkFailed) as wrong_said:
            await measure("h1", asked(opened, token="not-the-echo-token"), None)
    finally:
        server.close()
    assert str(parrot_said.value) == f"hive 'h2' at 127.0.0.1 port {port} did not answer as the hive the queen named"
    assert "did not answer as the hive the queen named" in str(wrong_said.value)


@pytest.fixture
def hive_tls(tmp_path: Path) -> TLSFiles:
    """A cluster CA and a hive certificate for 127.0.0.1, as `rbee tls init` and `rbee hive install` make them."""
    tls_ca.ensure_ca(tmp_path)
    cert, key = tls_ca.issue("h2", ["127.0.0.1"], tmp_path)
    (tmp_path / "hive.pem").write_bytes(cert)
    (tmp_path / "hive.key").write_bytes(key)
    return TLSFiles(tmp_path / "hive.pem", tmp_path / "hive.key", tmp_path / "ca.pem")


async def test_a_hive_with_tls_measures_over_tls_and_its_echo_takes_no_plain_connection(hive_tls: TLSFiles) -> None:
    echoes = Echoes("127.0.0.1", tls=hive_tls, idle_s=IDLE_S)
    try:
        opened = await echoes.open(EchoOpen(peer_address=PEER))
        got, _ = await talk(opened, hello(opened.token.get_secret_value()) + b"p")  # plain TCP, right token
        assert got == b""  # no TLS handshake: nothing
        tls_asked = asked(opened).model_copy(update={"peer_url": "https://127.0.0.1:7835"})
        with pytest.raises(LinkFailed, match="did not answer as the hive"):  # a CA that is not the cluster's
            await measure("h1", tls_asked, ssl.create_default_context())
        with pytest.raises(LinkFailed, match="plain http:// URL while this hive uses TLS"):
            await measure("h1", asked(opened), hive_tls.client_context())
        done = await measure("h1", tls_asked, hive_tls.client_context())
        assert done.rounds == 50 and done.rtt_ms_median < 5
    finally:
        echoes.close_all()
