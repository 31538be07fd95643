"""The echo a link measure runs against (rbee/hive/links.py): what it answers, to whom, and how much it reads.
The hive-to-hive path itself runs between real hives in tests/e2e/test_fleet_spreads.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rbee.contracts.spread_plans import MAX_BULK_BYTES, EchoOpen
from rbee.hive.links import NONCE_HEADER, PROOF_HEADER, Echoes, proof

PEER = "10.0.0.7"


def _client(echoes: Echoes, address: str = PEER) -> httpx.AsyncClient:
    async def echo(request: Request) -> Response:
        return await echoes.serve(request)
    app = Starlette(routes=[Route("/v1/hive/links/echo/{echo_id}", echo, methods=["POST"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url="http://h")


async def _chunks(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(1 << 20, total - sent)
        sent += piece
        yield bytes(piece)


async def test_an_echo_proves_its_token_and_refuses_a_streamed_body_over_the_bound() -> None:
    echoes = Echoes()
    opened = echoes.open(EchoOpen(peer_address=PEER))
    token = opened.token.get_secret_value()
    url = f"/v1/hive/links/echo/{opened.echo_id}"
    async with _client(echoes) as client:
        resp = await client.post(url, content=b"x" * 100, headers={"Authorization": f"Bearer {token}",
                                                                   NONCE_HEADER: "abc"})
        assert resp.status_code == 200 and resp.json() == {"received": 100}
        assert resp.headers[PROOF_HEADER] == proof(token, "abc") != proof("other", "abc")
        streamed = await client.post(url, content=_chunks(MAX_BULK_BYTES + 1),  # chunked: no length declared
                                     headers={"Authorization": f"Bearer {token}"})
        assert streamed.status_code == 413
    async with _client(echoes, "10.0.0.8") as elsewhere:
        moved = await elsewhere.post(url, headers={"Authorization": f"Bearer {token}"})
        assert moved.status_code == 403
