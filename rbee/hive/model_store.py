"""A hive's models: what a name means here (find, resolve, holds), pulls from the hub, copies from a peer
hive's share, shares to peers, removal, and a model's detail and disk use.

The top layer of the hive object below `Hive` (rbee/hive/service.py), on rbee/hive/worker_placement.py
(a model's shape and where it would run); the catalog itself is rbee/hive/catalog.py, the hub downloads.py.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from rbee.common import settings, tls
from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.catalog import HiveDisk
from rbee.contracts.copies import HiveFetch, ShareOpen, ShareOpened
from rbee.contracts.models import MemoryNeed, ModelDetail, ModelEntry
from rbee.hive import downloads, model_refs, offload_plan, peer_fetch
from rbee.hive.catalog import describe_file
from rbee.hive.estimate import OVERHEAD, estimate
from rbee.hive.gguf_info import GGUFSummary, NotAGGUFError
from rbee.hive.worker_placement import WorkerPlacement


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


class ModelStore(WorkerPlacement):
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
        lock = self.pull_locks.setdefault(downloads.catalog_name_guess(ref), asyncio.Lock())
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
        async with self.pull_locks.setdefault(asked.entry.name, asyncio.Lock()):
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


def _is_file(path: Path) -> bool:
    """Path.is_file, but False (not an exception) for names no file can have: too long, a NUL byte."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
