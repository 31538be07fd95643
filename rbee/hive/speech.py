"""Which keyless engine (whisper-server for speech, sd-server for images) a worker runs, and on which device
(mechanism for rbee/hive/worker_placement.py spawn_worker).

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
from rbee.hive.engine_sources import EngineSource


async def keyless_engine(src: EngineSource) -> Path:
    """The binary of keyless engine `src` (one that is `fronted`); `JobFailed` says why there is none."""
    found = await asyncio.to_thread(engine.locate, src)
    if found is not None:
        return found[0]
    built = await asyncio.to_thread(engine.builds, src)  # not the main engine's backend: another one
    if not built:
        raise JobFailed(f"no {src.binary} ({src.project}): run `rbee engine install --engine {src.name}` "
                        f"(or set {src.env})")
    return next(iter(built.values()))


async def keyless_device(src: EngineSource, binary: Path, asked: str | None) -> str | None:
    """The device a worker of `src`'s `binary` runs on: the CPU for rbee's CPU build, else what was asked."""
    return "cpu" if (await asyncio.to_thread(engine.builds, src)).get("cpu") == binary else asked
