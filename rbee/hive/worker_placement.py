"""Where a hive's worker runs and how it is started: the device(s) and engine build it goes to, its context
and slots, its front, and the spawn itself (one hive's devices, or its part of a spread across hives).

A layer of the hive object (`Hive`, rbee/hive/service.py), on rbee/hive/machine.py (the devices as
detected); offload_plan.py splits a model between GPUs and RAM, worker.py and supervisor.py run it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from rbee.common import settings
from rbee.common.daemon import is_loopback
from rbee.common.jobs import JobFailed
from rbee.contracts.hives import DeviceInfo, WorkerShape
from rbee.contracts.models import ModelEntry
from rbee.contracts.spreads import SpreadWorker
from rbee.contracts.workers import WorkerMode
from rbee.hive import model_refs, offload_plan
from rbee.hive.engine_sources import EngineSource, source_for
from rbee.hive.estimate import OVERHEAD, estimate, fitting_context
from rbee.hive.gguf_info import GGUFSummary, read_summary
from rbee.hive.machine import Machine
from rbee.hive.speech import keyless_device, keyless_engine
from rbee.hive.worker import WorkerProcess, WorkerSpec


class WorkerPlacement(Machine):
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
                        OVERHEAD * (len(group) - 1) and len({self.engine_for.get(d.id) for d in group}) == 1:
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
                                or len({self.engine_for.get(d.id) for d in chosen}) > 1):
            raise JobFailed(f"'{device_id}' cannot run one worker: a model spreads over different GPUs that one "
                            f"engine build drives, with the CPU last for layers offloaded to RAM ('cuda0+cpu'); "
                            f"its devices: {names}")
        return chosen

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
            model=model, mode=mode, engine=keyless or self.engine_for.get(on[0].id, Path(info.path or "")),
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
            model=model, mode=mode, engine=self.engine_for.get(gpus[0].id, Path(info.path)) if gpus else
            Path(info.path), slots=slots, context_per_slot=context, threads=settings.worker_threads(),
            host=self.address, tls=self.tls, device="+".join([d.id for d in gpus] + [offload_plan.CPU]),
            engine_device=",".join(names), tensor_split=tuple(max(1, round(s * 10_000)) for s in spread.tensor_split),
            gpu_layers=spread.gpu_layers, rpc=tuple(spread.rpc), offload=spread.describe or None,
            slot_save_path=await asyncio.to_thread(self.slots.path), cache_ram_mib=settings.worker_cache_ram_mib())
        self.supervisor.forget_dead()
        worker = await self.supervisor.spawn(spec, memory)
        await self.catalog.touch(model.name)
        return worker
