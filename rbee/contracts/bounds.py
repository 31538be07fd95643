"""Bounded field types for what a peer of limited trust (a hive) sends the queen.

A hive's report is read on the queen's event loop and ends up in `/v1/hives`, `/metrics`, the log and
the scheduler; every number in it is finite and in range, every string and list short, every id one
that can be a path segment, every address a host literal. A report outside these bounds is a 400 that
names the field, before anything of it is used.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A worker id: safe as a URL path segment and in a log line (no `/`, `?`, `#`, `..` at the start)."""

MAX_TEXT = 4096  # an error message, a problem description
MAX_NAME = 512  # a model name, a device name, a version
MAX_PATH = 4096
MAX_DEVICES = 64
MAX_MODELS = 4096
MAX_WORKERS = 256  # workers one hive may report; 8 GPUs x a few models each is far below this

Bytes = Annotated[int, Field(ge=0, le=2**60)]
Count = Annotated[int, Field(ge=0, le=2**31)]
Seconds = Annotated[float, Field(ge=0, le=2**40, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Celsius = Annotated[float, Field(ge=-100, le=500, allow_inf_nan=False)]


def _truncated(value: object) -> object:
    """Long text is cut, not refused: an error that quotes a worker's stderr must still be shown."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


Name = Annotated[str, Field(max_length=MAX_NAME)]
FilePath = Annotated[str, Field(max_length=MAX_PATH)]
Text = Annotated[str, BeforeValidator(_truncated)]
WorkerId = Annotated[str, Field(pattern=WORKER_ID_PATTERN)]


def _ip_literal(value: str) -> str:
    """The address in its canonical form; a host name, a URL or anything with a path is refused."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IP address (the one this hive's machine is reached at)") from None


HostAddress = Annotated[str, Field(max_length=64), AfterValidator(_ip_literal)]
