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

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator

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


DEVICE_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"
MAX_LENT_DEVICES = 16


class LentDevice(Contract):
    """One device an rpc-server lends to a spread, and the memory booked on it there."""

    device: str = Field(default="cpu", pattern=DEVICE_PATTERN)
    memory: int = Field(default=0, ge=0, le=2**50)


class RpcServerOpen(Contract):
    """queen -> helper: start one ggml-rpc-server lending `devices` to spread `spread` (`-d DEV1,DEV2`: llama.cpp
    0.3.36's rpc-server serves several devices, which llama-server lists as RPCn, RPCn+1, ... in this order),
    booking each device's `memory` bytes there.

    It listens on 127.0.0.1 only (the spread's listen channel end reaches it), with its local cache (`-c`) in
    the hive's state folder, so a reload of the same weights is not pushed over the network again."""

    spread: str = Field(pattern=SPREAD_ID_PATTERN)
    devices: list[LentDevice] = Field(default=[LentDevice()], min_length=1, max_length=MAX_LENT_DEVICES)

    @field_validator("devices")
    @classmethod
    def _once(cls, value: list[LentDevice]) -> list[LentDevice]:
        names = [d.device.lower() for d in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"device {twice[0]!r} is named twice: one rpc-server lends each device once")
        return [d.model_copy(update={"device": d.device.lower()}) for d in value]


class RpcServerInfo(Contract):
    """One rpc-server as its hive shows it (the answer to starting it, its report, and its stop)."""

    spread: str = Field(pattern=SPREAD_ID_PATTERN)
    devices: list[LentDevice] = Field(min_length=1, max_length=MAX_LENT_DEVICES)
    port: int | None = Field(default=None, ge=1, le=65535)  # on 127.0.0.1
    pid: int | None = Field(default=None, ge=1, le=2**31)
    state: Literal["starting", "ready", "stopped", "error"] = "starting"
    error: str | None = Field(default=None, max_length=4000)


class SpreadWorker(Contract):
    """queen -> main hive (inside SpawnWorker): llama-server's part of a spread. `rpc`: the dial ends' loopback
    ports, in llama-server's device order; `rpc_devices`: how many devices each of those rpc-servers lends
    (none given: one each); `tensor_split`: the shares of those devices (RPC0, RPC1, ...), then of the main
    hive's own GPUs (`gpus`); `gpu_layers`: the layers off the main hive's CPU (-ngl; the rest stay in RAM);
    `describe`: the split in words, shown with the worker."""

    rpc: list[str] = Field(min_length=1, max_length=MAX_RPC)
    rpc_devices: list[int] = Field(default=[], max_length=MAX_RPC)
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

    @field_validator("rpc_devices")
    @classmethod
    def _counts(cls, value: list[int]) -> list[int]:
        if any(not 1 <= n <= MAX_LENT_DEVICES for n in value):
            raise ValueError(f"an rpc-server lends 1 to {MAX_LENT_DEVICES} devices")
        return value

    @model_validator(mode="after")
    def _one_count_per_rpc_server(self) -> SpreadWorker:
        if self.rpc_devices and len(self.rpc_devices) != len(self.rpc):
            raise ValueError(f"rpc_devices gives {len(self.rpc_devices)} counts for {len(self.rpc)} rpc-servers")
        return self

    def rpc_device_count(self) -> int:
        """How many RPC devices llama-server lists first (RPC0..): each rpc-server's, in `rpc` order."""
        return sum(self.rpc_devices) if self.rpc_devices else len(self.rpc)

    @field_validator("tensor_split")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if any(not 0 <= s <= 1 for s in value) or sum(value) <= 0:
            raise ValueError("each share is between 0 and 1, and they add up to more than 0")
        return value
