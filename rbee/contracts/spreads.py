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

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_serializer

from rbee.contracts.bounds import HostAddress

SPREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CHANNEL_ID_PATTERN = r"^chan-[0-9a-f]{16}$"
MAX_PEM = 16384


class ChannelOpen(BaseModel):
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


class ChannelInfo(BaseModel):
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
