"""The machine's RAM, total and available, in bytes: what the CPU device offers and CPU workers may use.

Linux answers from /proc/meminfo, the fields psutil reads there (`MemTotal`, `MemAvailable`); elsewhere, or on a
kernel without `MemAvailable`, psutil answers, imported on first use: an idle daemon on Linux does without it
(about 1.4 MB of its RSS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostMemory", "host_memory", "parse_meminfo"]

MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class HostMemory:
    total: int
    available: int


def parse_meminfo(text: str) -> HostMemory | None:
    """`MemTotal` and `MemAvailable` of a /proc/meminfo text (`NAME:  VALUE kB` lines); None if one is missing."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        value, *unit = rest.split()
        if name in ("MemTotal", "MemAvailable") and value.isdigit():
            fields[name] = int(value) * (1024 if unit == ["kB"] else 1)
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        return None
    return HostMemory(total=fields["MemTotal"], available=fields["MemAvailable"])


def host_memory() -> HostMemory:
    """The RAM now (a read of /proc, microseconds: fine on the event loop, as psutil's was)."""
    try:
        found = parse_meminfo(MEMINFO.read_text())
    except (OSError, ValueError):  # no /proc (macOS, BSD), or a line parse_meminfo cannot read
        found = None
    if found is not None:
        return found
    import psutil  # the rare path: not Linux, or an old kernel

    memory = psutil.virtual_memory()
    return HostMemory(total=memory.total, available=memory.available)
