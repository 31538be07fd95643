"""Which whisper-server a speech worker runs, and where (mechanism for service.Hive.spawn_worker).

whisper-server takes no API key, so a speech worker runs only on a hive whose workers listen on loopback
(this machine's queen reaches it there; a hive's LAN address would expose it unguarded). The binary is
RBEE_WHISPER_SERVER, one on PATH, or rbee's build for the main engine's backend, else any build rbee made;
rbee's CPU build drives no GPU, so its worker goes on the CPU device whatever the placement preferred.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from rbee.common.jobs import JobFailed
from rbee.hive import engine
from rbee.hive.engine_sources import WHISPER


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


async def speech_engine(alias: str, address: str) -> Path:
    """The whisper-server for a speech worker on hive `alias` (its workers listen at `address`); `JobFailed`
    says why there is none."""
    if not is_loopback(address):
        raise JobFailed(f"speech models are served on hives whose workers listen on loopback only (whisper-server "
                        f"has no API key), and hive '{alias}' serves its workers at {address}")
    found = await asyncio.to_thread(engine.locate, WHISPER)
    if found is not None:
        return found[0]
    built = await asyncio.to_thread(engine.builds, WHISPER)  # not the main engine's backend: another one
    if not built:
        raise JobFailed("no whisper-server for speech models: run `rbee engine install --engine whisper` "
                        "(or set RBEE_WHISPER_SERVER)")
    return next(iter(built.values()))


async def speech_device(binary: Path, asked: str | None) -> str | None:
    """The device a speech worker of `binary` runs on: the CPU for rbee's CPU build, else what was asked."""
    return "cpu" if (await asyncio.to_thread(engine.builds, WHISPER)).get("cpu") == binary else asked
