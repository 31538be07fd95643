"""One machine as a hive holds it: its state folders, catalog, workers, spreads' channels and rpc-servers,
and its devices and engine builds, detected again every heartbeat.

The lowest layer of the hive object (`Hive`, rbee/hive/service.py); above it worker_placement.py (the
device(s) and engine build a worker runs on, and its spawn), then model_store.py (find, pull, copy, remove).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from rbee.common import logs, paths, settings, supervise
from rbee.common.jobs import Emit
from rbee.common.tls import TLSFiles
from rbee.contracts.hives import DeviceInfo
from rbee.contracts.status import EngineInfo
from rbee.hive import devices, engine, offload_plan, rpc_channel, shares
from rbee.hive.catalog import Catalog
from rbee.hive.engine_sources import SOURCES
from rbee.hive.host_memory import host_memory
from rbee.hive.rpc_servers import RpcServers
from rbee.hive.slot_cache import SlotCache
from rbee.hive.supervisor import Supervisor

log = logging.getLogger(__name__)

LIST_RETRY_S = 60.0  # a build whose --list-devices failed is asked again after this long
LOG_CHECK_S = 30.0  # how often the workers' logs are checked against RBEE_LOG_MAX_MB


class Machine:
    def __init__(self, alias: str = "localhost", state: Path | None = None, address: str = "127.0.0.1",
                 tls: TLSFiles | None = None) -> None:
        self.alias = alias
        self.address = address  # where its workers listen: loopback, or the LAN address of a remote hive
        self.tls = tls  # a remote hive with TLS: its workers speak HTTPS with its certificate
        self.front: str | None = None  # its API's URL (a remote hive's app sets it): fronted engines are served there
        state = paths.private_dir(state or paths.state_dir())  # catalog, workers' logs: 700 down from here
        self.catalog = Catalog(state / "hive" / "catalog.sqlite")
        self.supervisor = Supervisor(alias, state / "hive" / "workers")
        self.slots = SlotCache(state / "hive" / "slot-cache")  # text workers' saved KV caches
        self._engine: EngineInfo | None = None
        self.pull_locks: dict[str, asyncio.Lock] = {}  # one download of a model at a time (model_store.py)
        self._devices: list[DeviceInfo] = [devices.cpu_device(settings.memory_budget())]
        self._listed: dict[Path, list[devices.EngineDevice]] = {}  # each build's --list-devices, asked once
        self._list_failed: dict[Path, float] = {}  # builds whose listing failed, and when (asked again later)
        self.engine_for: dict[str, Path] = {}  # device id -> the build that drives it
        self._watch: asyncio.Task[None] | None = None
        self.shares = shares.Shares()  # what it serves to peers: the hive app's route, or the queen's for its own
        self.channels = rpc_channel.Channels(address, self._channel_target)  # spreads' RPC traffic (/v1/hive/channels)
        self.rpc_servers = RpcServers(state / "hive" / "rpc")  # devices lent to spreads (/v1/hive/rpc-servers)

    async def start(self) -> None:
        await self.refresh_devices()
        self._watch = supervise.start(f"devices-{self.alias}", self._watch_devices)
        await self.supervisor.reap_orphans()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.channels.close_all()
        await self.supervisor.stop_all()
        await self.rpc_servers.stop_all()

    async def _channel_target(self, port: int) -> bool:
        """A listen channel's target: a loopback port of a process this hive started, not one of its workers."""
        return port not in {w.port for w in self.supervisor.workers()} and await rpc_channel.started_here(port)

    async def refresh_devices(self) -> list[DeviceInfo]:
        """Detect the devices again: each engine build's list once per build, live figures every time."""
        info = await self.engine()
        engines = [Path(info.path)] if info.path and not info.problem else []
        engines += [p for p in map(Path, info.builds.values()) if p not in engines]
        for path in engines:
            failed_at = self._list_failed.get(path)
            if path in self._listed or (failed_at is not None and time.monotonic() - failed_at <= LIST_RETRY_S):
                continue
            try:
                self._listed[path] = await devices.engine_devices(path)
                self._list_failed.pop(path, None)
            except devices.ToolFailed as exc:  # a broken build, or a busy machine: asked again later
                if failed_at is None:
                    log.warning("%s --list-devices failed (%s): its devices are not used", path, exc)
                self._list_failed[path] = time.monotonic()
        listed, self.engine_for = devices.assign_engines([(p, self._listed.get(p)) for p in engines])
        found = await devices.detect(listed, settings.memory_budget())
        for device in found:
            before = next((d for d in self._devices if d.id == device.id), None)
            if device.failed and (before is None or before.failed != device.failed):
                log.error("device %s (%s) failed: %s; no new workers go there until it answers", device.id,
                          device.name, device.failed)
            elif before is not None and before.failed and not device.failed:
                log.info("device %s (%s) answers again", device.id, device.name)
        self._devices = found
        return found

    async def _watch_devices(self) -> None:
        """Every heartbeat: the devices' live figures; every LOG_CHECK_S: the workers' logs kept bounded."""
        logs_checked = time.monotonic()
        while True:
            await asyncio.sleep(settings.heartbeat_s())
            try:
                await self.refresh_devices()
            except Exception:  # a vendor tool surprised us: keep the last figures, try again next time
                log.exception("device detection failed")
            if time.monotonic() - logs_checked >= LOG_CHECK_S:
                logs_checked = time.monotonic()
                await asyncio.to_thread(logs.bound_folder, paths.worker_log_dir(), settings.log_max_bytes())

    async def engine(self, refresh: bool = False) -> EngineInfo:
        if self._engine is None or refresh or self._engine.problem:
            self._engine = await engine.describe()
        return self._engine

    async def install_engine(self, emit: Emit, force: bool = False, backend: str | None = None,
                             engine_name: str = "llama") -> dict[str, str]:
        result = await engine.install(emit, force=force, backend=backend, src=SOURCES[engine_name])
        if engine_name != "llama":
            return result
        self._listed.clear()  # a rebuild in the same place may drive other devices
        self._list_failed.clear()
        await self.engine(refresh=True)
        await self.refresh_devices()
        return result

    def memory_total(self) -> int:
        """What this hive may give CPU workers: RBEE_MEMORY_BUDGET, else the machine's RAM."""
        return settings.memory_budget() or host_memory().total

    def devices(self) -> list[DeviceInfo]:
        """What this hive computes on, as last detected: its engine's GPUs (if any) and the CPU."""
        return list(self._devices)

    def devices_unlent(self) -> list[DeviceInfo]:
        """The devices as this hive's own workers are placed on them: a device's free memory at most its total
        less what rpc-servers booked there for spreads across hives (booked before they hold it), as the
        queen's views count it (rbee/queen/device_views.py)."""
        lent = self.lent()
        return [d if not lent.get(d.id) else d.model_copy(update={"free_bytes": max(0, min(
            offload_plan.free_of(d), d.total_bytes - lent[d.id]))}) for d in self.devices()]

    def lent(self) -> dict[str, int]:
        """The memory booked on each device for rpc-servers lent to spreads (rbee/hive/rpc_servers.py)."""
        return self.rpc_servers.lent()
