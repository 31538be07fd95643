"""A model spread over several hives: the channels that carry llama.cpp RPC traffic between them.

    queen -> helper  POST   /v1/hive/channels  ChannelOpen(role=listen) -> ChannelOpened   (Bearer: join token)
    queen -> main    POST   /v1/hive/channels  ChannelOpen(role=dial)   -> ChannelOpened
    queen -> either  DELETE /v1/hive/channels/{channel_id}              -> ChannelInfo (what was closed)

For each spread the queen makes a key and a self-signed certificate per end (rbee.common.tls_ca.channel_pair)
and gives each hive its own pair and the other end's certificate: each side accepts only that exact
certificate (mutual TLS 1.3, pinned), so the channel opens between the two hives of that spread and nobody
else, whether the cluster has its CA or not. See rbee/hive/rpc_channel.py for what each end does.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_serializer, field_validator

from rbee.contracts.base import Contract
from rbee.contracts.bounds import HostAddress

SPREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CHANNEL_ID_PATTERN = r"^chan-[0-9a-f]{16}$"
MAX_PEM = 16384


class ChannelOpen(Contract):
    """queen -> hive: open one end of a spread's channel.

    listen: accept TLS from `peer_address` (the main hive) on this hive's address, relay each connection to
            127.0.0.1:`target_port` (an rpc-server this hive started).
    dial:   listen on 127.0.0.1 (the answer's port) and relay each connection over TLS to
            `peer_address`:`peer_port` (the helper's listener).
    """

    role: Literal["listen", "dial"]
    spread: str = Field(pattern=SPREAD_ID_PATTERN)
    certificate: str = Field(min_length=1, max_length=MAX_PEM)  # this end's, PEM
    key: SecretStr = Field(min_length=1, max_length=MAX_PEM)  # this end's, PEM (masked in repr; JSON carries it)
    peer_certificate: str = Field(min_length=1, max_length=MAX_PEM)  # the only one this end accepts, PEM
    peer_address: HostAddress  # listen: where the dialer connects from; dial: where the listener is
    target_port: int | None = Field(default=None, ge=1, le=65535)  # listen only
    peer_port: int | None = Field(default=None, ge=1, le=65535)  # dial only

    @field_serializer("key", when_used="json")
    def _key(self, key: SecretStr) -> str:
        return key.get_secret_value()


class ChannelInfo(Contract):
    """One end of a channel as its hive shows it (its status, and the answer to opening or closing it)."""

    channel_id: str = Field(pattern=CHANNEL_ID_PATTERN)
    role: Literal["listen", "dial"]
    spread: str = Field(pattern=SPREAD_ID_PATTERN)
    port: int = Field(ge=1, le=65535)  # listen: the TLS port on the hive's address; dial: the loopback port
    peer_address: HostAddress
    peer_port: int | None = Field(default=None, ge=1, le=65535)
    target_port: int | None = Field(default=None, ge=1, le=65535)
    connections: int = Field(default=0, ge=0, le=2**31)  # open now
    refused: int = Field(default=0, ge=0, le=2**62)  # turned away after a handshake (address, target) or dial
    broken: str | None = Field(default=None, max_length=300)  # the first LAN-side connection that failed (a cut
    # link, a peer gone): why, as the socket said it; the queen names the link with it when the spread fails


RPC_ENDPOINT_PATTERN = r"^127\.0\.0\.1:[0-9]{1,5}$"
MAX_RPC = 15


class RpcServerOpen(Contract):
    """queen -> helper: start a ggml-rpc-server lending `device` to spread `spread`, booking `memory` bytes there.

    It listens on 127.0.0.1 only (the spread's listen channel end reaches it), with its local cache (`-c`) in
    the hive's state folder, so a reload of the same weights is not pushed over the network again."""

    spread: str = Field(pattern=SPREAD_ID_PATTERN)
    device: str = Field(default="cpu", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    memory: int = Field(default=0, ge=0, le=2**50)


class RpcServerInfo(Contract):
    """One rpc-server as its hive shows it (the answer to starting it, its report, and its stop)."""

    spread: str = Field(pattern=SPREAD_ID_PATTERN)
    device: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    memory: int = Field(default=0, ge=0, le=2**50)
    port: int | None = Field(default=None, ge=1, le=65535)  # on 127.0.0.1
    pid: int | None = Field(default=None, ge=1, le=2**31)
    state: Literal["starting", "ready", "stopped", "error"] = "starting"
    error: str | None = Field(default=None, max_length=4000)


class SpreadWorker(Contract):
    """queen -> main hive (inside SpawnWorker): llama-server's part of a spread. `rpc`: the dial ends' loopback
    ports, in llama-server's device order; `tensor_split`: the shares of those devices, then of the main
    hive's own GPUs (`gpus`); `gpu_layers`: the layers off the main hive's CPU (-ngl; the rest stay in RAM);
    `describe`: the split in words, shown with the worker."""

    rpc: list[str] = Field(min_length=1, max_length=MAX_RPC)
    tensor_split: list[float] = Field(min_length=1, max_length=MAX_RPC + 16)
    gpus: list[str] = Field(default=[], max_length=16)
    gpu_layers: int = Field(ge=0, le=100_000)
    describe: str = Field(default="", max_length=200)

    @field_validator("rpc")
    @classmethod
    def _loopback(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            if not re.fullmatch(RPC_ENDPOINT_PATTERN, endpoint) or not 1 <= int(endpoint.split(":")[1]) <= 65535:
                raise ValueError(f"{endpoint[:40]!r} is not 127.0.0.1:PORT: llama-server reaches a spread's "
                                 "rpc-servers through its hive's dial channel ends, on loopback only")
        return value

    @field_validator("tensor_split")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if any(not 0 <= s <= 1 for s in value) or sum(value) <= 0:
            raise ValueError("each share is between 0 and 1, and they add up to more than 0")
        return value
