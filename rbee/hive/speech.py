"""Which keyless engine (whisper-server for speech, sd-server for images) a worker runs, and on which device
(mechanism for service.Hive.spawn_worker).

Neither engine takes an API key, so each listens on loopback only: the queen's own hive is reached there, and a
remote hive serves it through its front (rbee/hive/front.py; WHISPER and SD are `fronted`). The binary is the
engine's variable (RBEE_WHISPER_SERVER, RBEE_SD_SERVER), one on PATH, or rbee's build for the main engine's
backend, else any build rbee made; rbee's CPU build drives no GPU, so its worker goes on the CPU device whatever
the placement preferred.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rbee.common.jobs import JobFailed
from rbee.hive import engine
from rbee.hive.engine_sources import SD, WHISPER, EngineSource

KEYLESS: dict[str, EngineSource] = {"speech": WHISPER, "image": SD}
"""A model kind served by a keyless engine -> the engine (its `name` is what `rbee engine install --engine` takes)."""


async def keyless_engine(kind: str) -> Path:
    """The engine for a worker of a `kind` model (speech, image); `JobFailed` says why there is none."""
    src = KEYLESS[kind]
    found = await asyncio.to_thread(engine.locate, src)
    if found is not None:
        return found[0]
    built = await asyncio.to_thread(engine.builds, src)  # not the main engine's backend: another one
    if not built:
        raise JobFailed(f"no {src.binary} for {kind} models: run `rbee engine install --engine {src.name}` "
                        f"(or set {src.env})")
    return next(iter(built.values()))


async def keyless_device(kind: str, binary: Path, asked: str | None) -> str | None:
    """The device a `kind` worker of `binary` runs on: the CPU for rbee's CPU build, else what was asked."""
    src = KEYLESS[kind]
    return "cpu" if (await asyncio.to_thread(engine.builds, src)).get("cpu") == binary else asked
