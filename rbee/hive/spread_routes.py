"""The hive API's routes for spreads across hives (rbee/hive/app.py lists the groups): link measures between
hives, the private channels that carry a spread's RPC traffic, and the rpc-servers that lend devices to it.

    POST   /v1/hive/links/echoes        EchoOpen -> EchoOpened: a TCP echo on a port of its own, for one peer
                                        hive's link measure, for a while (its token; rbee/hive/links.py)
    POST   /v1/hive/links/measure       LinkMeasure -> LinkMeasured: measure the link to a peer hive's echo
    POST   /v1/hive/channels            ChannelOpen -> ChannelInfo: one end of a spread's RPC channel
    DELETE /v1/hive/channels/{id}       close it and its connections (rbee/hive/rpc_channel.py)
    POST   /v1/hive/rpc-servers         RpcServerOpen -> RpcServerInfo: lend devices to a spread (127.0.0.1 only)
    DELETE /v1/hive/rpc-servers/{spread}  stop that spread's rpc-servers (rbee/hive/rpc_servers.py)
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee.common.jobs import JobFailed
from rbee.contracts.spread_plans import EchoOpen, LinkMeasure
from rbee.contracts.spreads import SPREAD_ID_PATTERN, ChannelOpen, RpcServerOpen
from rbee.hive import links
from rbee.hive.api_util import Refusal, hive_of, parse
from rbee.hive.rpc_channel import ChannelRefused
from rbee.hive.rpc_servers import RpcRefused


async def open_echo(request: Request) -> Response:
    """Answer one peer hive's link measure for a while (the queen asks, before it asks that peer to measure)."""
    asked = await parse(request, EchoOpen)
    try:
        opened = await request.app.state.echoes.open(asked)
    except links.LinkFailed as exc:
        raise Refusal(409, str(exc), "too_many_echoes") from exc
    return JSONResponse(opened.model_dump(mode="json"), status_code=201)


async def measure_link(request: Request) -> Response:
    """Measure the link from here to a peer hive's echo (its URL and token from the queen)."""
    hive = hive_of(request)
    asked = await parse(request, LinkMeasure)
    try:
        measured = await links.measure(hive.alias, asked, hive.tls.client_context() if hive.tls else None)
    except links.LinkFailed as exc:
        raise Refusal(502, str(exc), "link_failed") from exc
    return JSONResponse(measured.model_dump(mode="json"))


async def open_channel(request: Request) -> Response:
    """One end of a spread's channel (the queen opens the helper's listen end first, then the main's dial end)."""
    asked = await parse(request, ChannelOpen)
    try:
        opened = await hive_of(request).channels.open(asked, api_port=request.app.state.port)
    except ChannelRefused as exc:
        raise Refusal(exc.status, str(exc), exc.code) from exc
    return JSONResponse(opened.model_dump(mode="json"), status_code=201)


async def close_channel(request: Request) -> Response:
    closed = await hive_of(request).channels.close(request.path_params["channel_id"])
    if closed is None:
        raise Refusal(404, f"There is no channel '{request.path_params['channel_id'][:80]}' on this hive.",
                       "not_found")
    return JSONResponse(closed.model_dump(mode="json"))


async def start_rpc_server(request: Request) -> Response:
    asked = await parse(request, RpcServerOpen)
    try:
        started = await hive_of(request).start_rpc_server(asked)
    except RpcRefused as exc:
        raise Refusal(exc.status, str(exc), exc.code) from exc
    except JobFailed as exc:
        raise Refusal(400, str(exc), "invalid_device") from exc
    return JSONResponse(started.model_dump(mode="json"), status_code=201)


async def stop_rpc_servers(request: Request) -> Response:
    spread = request.path_params["spread"]
    if not re.fullmatch(SPREAD_ID_PATTERN, spread):
        raise Refusal(400, "A spread's id is letters, digits, '.', '_' and '-' (at most 64).", "invalid_spread")
    stopped = await hive_of(request).rpc_servers.stop(spread)
    return JSONResponse([s.model_dump(mode="json") for s in stopped])


routes = [
    Route("/v1/hive/links/echoes", open_echo, methods=["POST"]),
    Route("/v1/hive/links/measure", measure_link, methods=["POST"]),
    Route("/v1/hive/channels", open_channel, methods=["POST"]),
    Route("/v1/hive/channels/{channel_id}", close_channel, methods=["DELETE"]),
    Route("/v1/hive/rpc-servers", start_rpc_server, methods=["POST"]),
    Route("/v1/hive/rpc-servers/{spread}", stop_rpc_servers, methods=["DELETE"]),
]
