"""The one seam between the queen and a hive: what the scheduler, the routes and the copies use of either kind.

    Hive        rbee/hive/service.py: the queen's embedded hive for its own machine, called in-process
    RemoteHive  rbee/queen/remote_hive.py: a hive on another machine, called over its API

Both satisfy `HiveSeam` for real (mypy checks it in `_both_kinds_conform`), with the same errors
(rbee/queen/hive_errors.py); callers ask for the kind only where it truly matters: registration and
heartbeats (remote only), the local engine's installation, and which hive serves a copy's files on which port.
A local hive is always READY; a remote one is READY while its heartbeats come, else UNREACHABLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from rbee.common.jobs import Emit
from rbee.contracts.catalog import HiveDisk
from rbee.contracts.copies import HiveFetch, ShareOpen, ShareOpened
from rbee.contracts.hives import DeviceInfo, HiveState, HiveStatus, WorkerShape
from rbee.contracts.models import ModelDetail, ModelEntry
from rbee.contracts.slots import SlotCacheList, SlotRestored, SlotSave, Stopped
from rbee.contracts.spreads import ChannelInfo, ChannelOpen, RpcServerInfo, RpcServerOpen, SpreadWorker
from rbee.contracts.status import HiveInfo
from rbee.contracts.workers import WorkerMode
from rbee.hive.service import Hive
from rbee.hive.worker import WorkerProcess
from rbee.queen.remote_hive import RemoteHive
from rbee.queen.remote_workers import RemoteWorker

AnyWorker = WorkerProcess | RemoteWorker


class CatalogView(Protocol):
    async def entries(self) -> list[ModelEntry]: ...


class WorkerSet(Protocol):
    """A hive's workers, as its supervisor keeps them."""

    def workers(self) -> Sequence[AnyWorker]: ...

    def get(self, worker_id: str) -> AnyWorker | None: ...

    async def stop(self, worker_id: str) -> AnyWorker | None: ...

    def keep(self, worker: Any) -> None:
        """List a failed worker again after its process was stopped (its reason stays shown)."""
        ...


@runtime_checkable
class HiveSeam(Protocol):
    alias: str

    @property
    def state(self) -> HiveState: ...

    @property
    def catalog(self) -> CatalogView: ...

    @property
    def supervisor(self) -> WorkerSet: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def info(self) -> HiveInfo: ...

    def status(self) -> HiveStatus: ...

    def devices(self) -> list[DeviceInfo]: ...

    def memory_total(self) -> int: ...

    async def resolve(self, model: str) -> ModelEntry:
        """The servable entry for `model`; `ModelUnavailable` says why not."""
        ...

    async def holds(self, model: str) -> ModelEntry | None:
        """The entry its catalog holds under `model` with its file there; nothing is added or downloaded."""
        ...

    async def need(self, model: ModelEntry, shape: WorkerShape | None = None) -> int: ...

    async def spawn_worker(self, model: ModelEntry, mode: WorkerMode, memory: int = 0,
                           shape: WorkerShape | None = None, device: str | None = None,
                           spread: SpreadWorker | None = None) -> AnyWorker:
        """A ready worker (`spread`: llama-server's part of a spread across hives); `WorkerStartError` or
        `JobFailed` saying why not."""
        ...

    async def detail(self, name: str, context_per_slot: int | None = None,
                     slots: int | None = None) -> ModelDetail: ...

    async def remove(self, name: str) -> ModelEntry:
        """`ModelUnavailable` when it has no such model, `ModelInUse` while it answers requests."""
        ...

    async def disk(self) -> HiveDisk: ...

    async def pull(self, model: str, emit: Emit) -> ModelEntry:
        """A job body: the model onto this hive; `JobFailed` saying why not."""
        ...

    async def copy_in(self, asked: HiveFetch, emit: Emit) -> ModelEntry: ...

    async def open_share(self, asked: ShareOpen) -> ShareOpened: ...

    async def save_and_stop(self, worker_id: str, slots: list[SlotSave]) -> Stopped:
        """Save those slots' KV caches (bounded in time by the hive), then stop the worker whatever happened;
        `SlotRefused` for a worker it does not know (rbee/queen/slot_restore.py is the caller)."""
        ...

    async def restore_slot(self, worker_id: str, slot: int, key: str) -> SlotRestored:
        """The slot saved under `key` for the worker's model, read into its idle `slot`: restored or why not;
        `SlotRefused` for no such worker, slot or key."""
        ...

    async def slot_cache(self) -> SlotCacheList:
        """The saved slots it holds, per model and key."""
        ...

    # -- spreads across hives (rbee/queen/spread_run.py); each failure is a `JobFailed` saying why --------
    @property
    def address(self) -> str: ...

    def lent(self) -> dict[str, int]:
        """The memory its rpc-servers hold for spreads, per device."""
        ...

    async def start_rpc_server(self, asked: RpcServerOpen) -> RpcServerInfo: ...

    async def stop_rpc_servers(self, spread: str) -> None: ...

    async def open_channel(self, asked: ChannelOpen) -> ChannelInfo: ...

    async def close_channel(self, channel_id: str) -> None: ...


def _both_kinds_conform(local: Hive, remote: RemoteHive) -> list[HiveSeam]:
    """Never called: where mypy checks that both kinds of hive satisfy the seam."""
    return [local, remote]
