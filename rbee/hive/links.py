"""A hive's side of a link measure: the echo another hive measures against, and the measure itself.

The queen measures the link between hives A and B (for a spread across hives, rbee/queen/spread_plan.py)
through the trust path copies use (rbee/hive/shares.py): it opens an echo on B for A's address
(`POST /v1/hive/links/echoes`, B's join token) and gets a random token; it asks A to measure
(`POST /v1/hive/links/measure`, A's join token) with B's address from its registry and that token; A sends
small round trips and one bounded bulk body to `POST /v1/hive/links/echo/{id}` on B.

What an echo answers, and to whom:

    only the address the queen named, only with the echo's token, until it expires (MAX_ECHO_S at most),
    at most ECHO_USES requests; a body of at most MAX_BULK_BYTES (413 before reading a larger declared
    one, and when more arrives), read and dropped; every answer proves the token (HMAC of the caller's nonce)

What a measure does, so that a measure cannot be turned into a port scanner or a request forger:

    the peer URL is an address literal with a port (the contract's pattern: no names to resolve), HTTPS when
    this hive has TLS (checked against the cluster CA); it carries X-Rbee-Hop, so a queen refuses it; the
    first request must come back with the token's proof, else nothing more is sent and the answer is the
    same one whatever was there (closed port, another program, a wrong token): "did not answer as the hive";
    rounds and bulk size are bounded by the contract; one measure runs at a time on this hive.

Refusals: no or wrong token, an unknown or expired echo -> 401; another address -> 403; too large -> 413.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import statistics
import time
from dataclasses import dataclass

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.common.daemon import same_address
from rbee.common.error_responses import error_response
from rbee.common.hop import HOP
from rbee.contracts.spread_plans import (
    MAX_BULK_BYTES,
    MAX_ROUNDS,
    EchoOpen,
    EchoOpened,
    LinkMeasure,
    LinkMeasured,
)

log = logging.getLogger(__name__)

MAX_ECHOES = 32
ECHO_USES = MAX_ROUNDS + 2  # the proof, the rounds, the bulk body
ECHO_ROUTE = r"^/v1/hive/links/echo/echo-[0-9a-f]{16}$"
"""The one route an echo's token opens; every other route of the hive still needs the join token."""
NONCE_HEADER = "X-Rbee-Nonce"
PROOF_HEADER = "X-Rbee-Proof"


class LinkFailed(Exception):
    """The measure did not happen; the message is the same whatever the peer was (see the module docstring)."""


def proof(token: str, nonce: str) -> str:
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()


@dataclass
class _Echo:
    digest: bytes
    token: str
    peer: str
    expires_at: float
    uses: int = 0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Echoes:
    def __init__(self) -> None:
        self._echoes: dict[str, _Echo] = {}

    def open(self, asked: EchoOpen) -> EchoOpened:
        now = time.monotonic()
        self._echoes = {k: e for k, e in self._echoes.items() if e.expires_at > now}
        if len(self._echoes) >= MAX_ECHOES:
            raise LinkFailed(f"this hive already has {MAX_ECHOES} open echoes; try again in a minute")
        token, echo_id = secrets.token_urlsafe(32), f"echo-{secrets.token_hex(8)}"
        self._echoes[echo_id] = _Echo(_digest(token), token, asked.peer_address, now + asked.expires_s)
        log.info("answering link echoes from %s as %s for %.0f s", asked.peer_address, echo_id, asked.expires_s)
        return EchoOpened(echo_id=echo_id, token=SecretStr(token))

    def _refusal(self, request: Request) -> tuple[_Echo | None, Response | None]:
        client = request.client.host if request.client else "?"
        echo = self._echoes.get(request.path_params["echo_id"])
        given = request.headers.get("authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if echo is None or echo.expires_at <= time.monotonic() or echo.uses >= ECHO_USES or not token or \
                not hmac.compare_digest(_digest(token), echo.digest):
            log.warning("refused a link echo to %s: %s", client, "no token" if not token else
                        "unknown, used up or expired echo" if echo is None or echo.expires_at <= time.monotonic()
                        or echo.uses >= ECHO_USES else "wrong token")
            return None, error_response(401, "A valid echo token is required.", code="invalid_token")
        if not same_address(client, echo.peer):
            log.warning("refused a link echo to %s: it was opened for %s", client, echo.peer)
            return None, error_response(403, "This echo is for another address.", code="forbidden")
        return echo, None

    async def serve(self, request: Request) -> Response:
        """Read (and drop) a body of at most MAX_BULK_BYTES; answer its size and the proof of the token."""
        echo, refused = self._refusal(request)
        if refused is not None:
            return refused
        assert echo is not None
        echo.uses += 1
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BULK_BYTES:
            return error_response(413, f"An echo takes at most {MAX_BULK_BYTES} bytes.", code="too_large")
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > MAX_BULK_BYTES:
                return error_response(413, f"An echo takes at most {MAX_BULK_BYTES} bytes.", code="too_large")
        nonce = request.headers.get(NONCE_HEADER, "")[:64]
        return JSONResponse({"received": received}, headers={PROOF_HEADER: proof(echo.token, nonce)})


_one_at_a_time = asyncio.Lock()


async def measure(source: str, asked: LinkMeasure, context: ssl.SSLContext | None) -> LinkMeasured:
    """Round trips and one bulk body against hive `asked.peer`'s echo, from this hive (`source`)."""
    if asked.peer_url.startswith("http://") and context is not None:
        raise LinkFailed(f"hive '{asked.peer}' was named with a plain http:// URL while this hive uses TLS; "
                         "refused")
    async with _one_at_a_time:
        return await _measure(source, asked, context)


async def _measure(source: str, asked: LinkMeasure, context: ssl.SSLContext | None) -> LinkMeasured:
    import httpx  # imported where a measure runs, as the hive's other clients are

    token = asked.token.get_secret_value()
    url = f"{asked.peer_url}/v1/hive/links/echo/{asked.echo_id}"
    plain = asked.peer_url.startswith("http://")
    failed = LinkFailed(f"hive '{asked.peer}' at {asked.peer_url} did not answer as the hive the queen named")
    async with httpx.AsyncClient(verify=False if plain else context or True, timeout=httpx.Timeout(10.0, connect=3.0),
                                 headers={"Authorization": f"Bearer {token}", **HOP}) as client:
        try:
            nonce = secrets.token_hex(16)
            first = await client.post(url, headers={NONCE_HEADER: nonce})
            if first.status_code != 200 or not hmac.compare_digest(first.headers.get(PROOF_HEADER, ""),
                                                                   proof(token, nonce)):
                raise failed
            rtts = []
            for _ in range(asked.rounds):
                started = time.perf_counter()
                (await client.post(url)).raise_for_status()
                rtts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            bulk = await client.post(url, content=bytes(asked.bulk_bytes))
            took = time.perf_counter() - started
            bulk.raise_for_status()
        except httpx.HTTPError:
            raise failed from None
    try:
        received = bulk.json().get("received")
    except ValueError:
        received = None
    if received != asked.bulk_bytes:
        raise failed
    rtts.sort()
    return LinkMeasured(source=source, peer=asked.peer, rtt_ms_median=round(statistics.median(rtts), 3),
                        rtt_ms_p90=round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.9))], 3),
                        mbps=round(asked.bulk_bytes / max(took, 1e-6) / 1e6, 1), rounds=asked.rounds,
                        bulk_bytes=asked.bulk_bytes)
