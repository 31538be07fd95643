"""Which whisper-server a speech worker runs, and on which device (mechanism for service.Hive.spawn_worker).

whisper-server takes no API key, so it listens on loopback only: the queen's own hive is reached there, and a
remote hive serves it through its front (rbee/hive/front.py; WHISPER is `fronted`). The binary is
RBEE_WHISPER_SERVER, one on PATH, or rbee's build for the main engine's backend, else any build rbee made;
rbee's CPU build drives no GPU, so its worker goes on the CPU device whatever the placement preferred.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rbee.common.jobs import JobFailed
from rbee.hive import engine
from rbee.hive.engine_sources import WHISPER


async def speech_engine() -> Path:
    """The whisper-server for a speech worker; `JobFailed` says why there is none."""
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
