"""Spreads across hives, as planned: a forced spread's syntax, link measures, and the plan the queen makes.

    keeper -> queen   POST /v1/spreads/plan  SpreadAsk -> SpreadPlan (or an error with the numbers)
    keeper -> queen   POST /v1/links/measure LinksAsk  -> list[LinkMeasured];  GET /v1/links -> the same
    queen  -> B       POST /v1/hive/links/echoes     EchoOpen -> EchoOpened   (Bearer: B's join token)
    queen  -> A       POST /v1/hive/links/measure    LinkMeasure -> LinkMeasured (Bearer: A's join token)
    A      -> B       TCP to EchoOpened.port: the echo's own protocol (rbee/hive/links.py), its token,
                                                  from A's address only

A forced spread is written `HIVE:DEV+HIVE:DEV` (`rbee worker start MODEL --device a:cuda0+b:cpu`,
`rbee model set MODEL --spread ...`): at least two devices, no device twice, on at least two hives.
"""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_serializer, field_validator

from rbee.contracts.base import Contract
from rbee.contracts.bounds import HostAddress, Name

ALIAS_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
DEVICE_RE = r"[A-Za-z0-9_.-]{1,32}"
SPREAD_PATTERN = rf"^{ALIAS_RE}:{DEVICE_RE}(\+{ALIAS_RE}:{DEVICE_RE}){{1,15}}$"
MAX_SPREAD_DEVICES = 16
ECHO_ID_PATTERN = r"^echo-[0-9a-f]{16}$"
MAX_ECHO_S = 120.0
MAX_ROUNDS = 200
MAX_BULK_BYTES = 16 << 20
"""The most one bulk transfer of a measure sends, and the most an echo accepts in one body."""


class BadSpread(ValueError):
    """A forced spread that cannot mean anything: the message says what to write instead."""


class SpreadDevice(Contract):
    hive: str
    device: str

    def __str__(self) -> str:
        return f"{self.hive}:{self.device}"


def parse_spread(text: str) -> list[SpreadDevice]:
    """`HIVE:DEV+HIVE:DEV` as its devices; `BadSpread` saying what is wrong with it."""
    parts = text.strip().split("+")
    if len(parts) > MAX_SPREAD_DEVICES:
        raise BadSpread(f"a spread has at most {MAX_SPREAD_DEVICES} devices; {text!r} names {len(parts)}")
    found: list[SpreadDevice] = []
    for part in parts:
        hive, sep, device = part.partition(":")
        if not sep or not re.fullmatch(ALIAS_RE, hive) or not re.fullmatch(DEVICE_RE, device):
            raise BadSpread(f"{part!r} in {text!r} is not HIVE:DEVICE (for example gaming-pc:cuda0); a spread "
                            "across hives is written HIVE:DEV+HIVE:DEV")
        found.append(SpreadDevice(hive=hive, device=device.lower()))
    if len(found) < 2:
        raise BadSpread(f"{text!r} names one device; a spread needs two or more (HIVE:DEV+HIVE:DEV), and one "
                        f"device is chosen with -a {found[0].hive} --device {found[0].device}")
    seen: set[tuple[str, str]] = set()
    for d in found:
        if (d.hive, d.device) in seen:
            raise BadSpread(f"{d} is named twice in {text!r}")
        seen.add((d.hive, d.device))
    if len({d.hive for d in found}) == 1:
        raise BadSpread(f"every device of {text!r} is on hive '{found[0].hive}': spread over one hive's GPUs "
                        f"with -a {found[0].hive} --device {'+'.join(d.device for d in found)}")
    return found


def is_spread(device: str | None) -> bool:
    """Whether a `--device` value names devices of hives (HIVE:DEV...) rather than one hive's own."""
    return device is not None and ":" in device


class EchoOpen(Contract):
    """queen -> B: answer echoes from the hive at `peer_address` for `expires_s` seconds."""

    peer_address: HostAddress
    expires_s: float = Field(default=60.0, gt=0, le=MAX_ECHO_S)


class EchoOpened(Contract):
    echo_id: str = Field(pattern=ECHO_ID_PATTERN)
    token: SecretStr = Field(max_length=128)
    port: int = Field(ge=1, le=65535, description="the TCP port the echo listens on, on the hive's address")

    @field_serializer("token", when_used="json")
    def _reveal(self, token: SecretStr) -> str:
        return token.get_secret_value()


class LinkMeasure(Contract):
    """queen -> A: measure the link to hive `peer` at `peer_url` (the queen's registry's address: its host,
    and https when TLS is on) through the echo the queen opened there, on `echo_port` of that host."""

    peer: str = Field(pattern=rf"^{ALIAS_RE}$")
    peer_url: str = Field(max_length=300, pattern=r"^https?://(\[[0-9a-fA-F:.]+\]|[0-9.]+):[0-9]{1,5}$")
    echo_id: str = Field(pattern=ECHO_ID_PATTERN)
    echo_port: int = Field(ge=1, le=65535)
    token: SecretStr = Field(max_length=128)
    rounds: int = Field(default=50, ge=1, le=MAX_ROUNDS)
    bulk_bytes: int = Field(default=4 << 20, ge=1 << 16, le=MAX_BULK_BYTES)

    @field_serializer("token", when_used="json")
    def _reveal(self, token: SecretStr) -> str:
        return token.get_secret_value()


class LinkMeasured(Contract):
    """One link as measured from `source` to `peer`: small round trips and one bulk transfer."""

    source: str
    peer: str
    rtt_ms_median: float = Field(ge=0)
    rtt_ms_p90: float = Field(ge=0)
    mbps: float = Field(ge=0, description="megabytes per second of the bulk transfer")
    rounds: int = Field(ge=1)
    bulk_bytes: int = Field(ge=0)
    measured_at: float = Field(default=0.0, description="Unix time the queen got it")


class LinksAsk(Contract):
    """Measure these pairs (`a`, `b`: aliases), or, with none, every pair of ready hives with no fresh one."""

    a: str | None = Field(default=None, pattern=rf"^{ALIAS_RE}$")
    b: str | None = Field(default=None, pattern=rf"^{ALIAS_RE}$")


class SpreadAsk(Contract):
    """The model's need is what the queen estimates for its workers today (its models.toml context and slots)."""

    model: Name = Field(min_length=1)
    spread: str | None = Field(default=None, max_length=1200, description="a forced spread, HIVE:DEV+HIVE:DEV")

    @field_validator("spread")
    @classmethod
    def _spread(cls, value: str | None) -> str | None:
        return None if value is None else "+".join(map(str, parse_spread(value)))


class PlannedDevice(Contract):
    """One device of a spread: its hive, its room, its share of the layers, and its place in llama-server's
    device list (`order`; None for the main hive's CPU, which holds the layers not offloaded)."""

    hive: str
    device: str
    room: int
    share: float
    rpc: bool
    order: int | None


class RefusedLink(Contract):
    hive: str
    reason: str


class SpreadPlan(Contract):
    """A spread, or why there is none: `spread` False with `reason` (it fits one hive, or cannot be held)."""

    model: str
    need: int
    spread: bool
    reason: str
    main: str | None = None
    helpers: list[str] = []
    devices: list[PlannedDevice] = []
    tensor_split: list[float] = []  # llama-server's --tensor-split, in its device order
    main_cpu_share: float = 0.0  # the layers left on the main hive's CPU (not offloaded: -ngl)
    rooms: dict[str, int] = {}  # each hive's room, as the plan saw it
    links: list[LinkMeasured] = []
    refused: list[RefusedLink] = []
