"""A hive on another machine, as the queen sees it: the same seam as the embedded `Hive` (rbee/queen/hive_seam.py).

Here the seam's methods are calls to the hive's API (rbee/queen/hive_client.py to rbee/hive/app.py), its
workers the records its heartbeats keep current (rbee/queen/remote_workers.py), and its pulls and copies jobs
there that the queen follows (rbee/queen/remote_jobs.py). A failed call raises what the embedded hive would
raise for the same thing (rbee/queen/hive_errors.py `from_remote`). Requests go straight to the remote workers
with their own keys. The queen's `HF_ENDPOINT` and `HF_TOKEN` go with each pull, over this authenticated
channel, and nowhere else.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from urllib.parse import quote, urlencode

from pydantic import ValidationError

from rbee.common import settings
from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.catalog import HiveDisk, HivePull
from rbee.contracts.copies import HiveFetch, ShareOpen, ShareOpened
from rbee.contracts.hives import (
    DeviceInfo,
    HiveReport,
    HiveState,
    HiveStatus,
    HostedWorker,
    ResolvedModel,
    ResolveModel,
    SpawnWorker,
    WorkerShape,
)
from rbee.contracts.models import ModelDetail, ModelEntry
from rbee.contracts.slots import SlotCacheList, SlotRestore, SlotRestored, SlotSave, Stopped
from rbee.contracts.spreads import ChannelInfo, ChannelOpen, RpcServerInfo, RpcServerOpen, SpreadWorker
from rbee.contracts.status import HiveInfo
from rbee.contracts.workers import WorkerMode, WorkerState
from rbee.hive import model_refs
from rbee.hive.downloads import catalog_names
from rbee.hive.model_store import ModelUnavailable
from rbee.hive.rpc_servers import booked
from rbee.hive.slot_cache import RESTORE_TIMEOUT_S, SlotRefused
from rbee.hive.worker import START_TIMEOUT_S, STOP_GRACE_S, WorkerStartError
from rbee.queen import hive_errors, hive_trust, remote_jobs
from rbee.queen.errors import QueenError
from rbee.queen.hive_client import HiveCallFailed, HiveClient
from rbee.queen.hive_trust import ReportRefused
from rbee.queen.remote_workers import RemoteSpec, RemoteSupervisor, RemoteWorker

log = logging.getLogger(__name__)


def _shape(model: str, at_least: int | None = None) -> WorkerShape:
    """The queen's own settings for a model's workers (its models.toml), sent to remote hives, with the context
    a request needs (`at_least`)."""
    try:
        own = model_refs.model_settings(model)
    except model_refs.BadModelRef:
        return WorkerShape(at_least=at_least)  # the scheduler reports a broken file with the request
    return WorkerShape(context=own.context, slots=own.slots, at_least=at_least)


def _model_path(name: str) -> str:
    return "/v1/hive/models/" + quote(name, safe="")


class _Catalog:
    def __init__(self) -> None:
        self.models: list[ModelEntry] = []

    async def entries(self) -> list[ModelEntry]:
        return list(self.models)


class RemoteHive:
    def __init__(self, report: HiveReport, token: str, tls: ssl.SSLContext | None = None,
                 certificate: str | None = None) -> None:
        self.alias = report.alias
        self.report = report
        self.client = HiveClient(self.alias, lambda: self.base_url, token, tls)
        self.supervisor = RemoteSupervisor(self.alias, self.client)
        self.catalog = _Catalog()
        self.state = HiveState.READY
        self.last_seen = time.monotonic()
        self.problem: str | None = None
        self.registrations = 0  # registrations heard (the route counts them); heartbeats do not count
        # (model, context, slots, at_least) -> bytes
        self._needs: dict[tuple[str, int | None, int | None, int | None], int] = {}
        self.certificate = certificate  # the PEM `tls` pins, when the queen recorded one for this hive
        self.heard_from(report, token)

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self.client.tls

    async def use_tls(self, context: ssl.SSLContext | None, certificate: str | None) -> None:
        """Check this hive and its workers with `context` (pinning `certificate`) from now on: it was re-issued."""
        self.certificate = certificate
        await self.client.use_tls(context)
        self.supervisor.use_tls(context)

    @property
    def base_url(self) -> str:
        host = f"[{self.report.address}]" if ":" in self.report.address else self.report.address
        return f"{'https' if self.report.tls else 'http'}://{host}:{self.report.port}"

    def heard_from(self, report: HiveReport, token: str) -> list[str]:
        """A registration or heartbeat arrived: the hive is (again) ready, and its workers are as it says;
        the ids of the workers adopted from it."""
        self.client.use_token(token)
        if self.state is HiveState.UNREACHABLE:
            log.info("hive %s is back", self.alias)
        self.report, self.state, self.last_seen = report, HiveState.READY, time.monotonic()
        self.catalog.models = report.models
        return self.supervisor.reconcile(report.workers)

    def not_answering(self, why: str) -> None:
        """A call found it gone (a spread's helper): unreachable now, not after the heartbeat timeout; its next
        heartbeat makes it ready again."""
        if self.state is HiveState.READY:
            log.warning("hive %s is unreachable: %s", self.alias, why)
            self.state = HiveState.UNREACHABLE
            self.supervisor.mark_unreachable()

    def check_alive(self, timeout_s: float) -> None:
        silent = time.monotonic() - self.last_seen
        if self.state is HiveState.READY and silent > timeout_s:
            log.warning("hive %s is unreachable: no heartbeat for %.0f s", self.alias, silent)
            self.state = HiveState.UNREACHABLE
            self.supervisor.mark_unreachable()

    def _errors(self, failing: Callable[[str], Exception], what: str = "",
                by_status: Mapping[int, Callable[[str], Exception]] | None = None) -> AbstractContextManager[None]:
        """Its calls' failures as the embedded hive's errors (hive_errors.py)."""
        return hive_errors.from_remote(self.alias, self.report.version, failing, what, by_status)

    # -- the seam ---------------------------------------------------------------------------------
    async def resolve(self, model: str) -> ModelEntry:
        return (await self._resolved(model)).entry

    async def _resolved(self, model: str, at_least: int | None = None) -> ResolvedModel:
        shape = _shape(model, at_least)
        with self._errors(ModelUnavailable):
            raw = await self.client.call("POST", "/v1/hive/resolve",
                                         ResolveModel(model=model, **shape.model_dump()).model_dump_json())
        resolved = ResolvedModel.model_validate_json(raw)
        self._needs[(resolved.entry.name, shape.context, shape.slots, at_least)] = resolved.need
        return resolved

    async def holds(self, model: str) -> ModelEntry | None:
        """What its catalog (as last reported) holds under `model` and still has the file of."""
        names = catalog_names(model)
        return next((m for m in self.catalog.models if m.name in names and not m.missing), None)

    async def need(self, model: ModelEntry, shape: WorkerShape | None = None) -> int:
        """What the hive estimated for the model with the queen's settings for it (else the hive's own), and
        the context a request needs (`shape.at_least`)."""
        at_least = shape.at_least if shape else None
        own = _shape(model.name, at_least)
        key = (model.name, own.context, own.slots, at_least)
        if key not in self._needs:
            await self._resolved(model.name, at_least)
        return self._needs[key]

    def memory_total(self) -> int:
        return self.report.memory_total

    @property
    def address(self) -> str:
        return self.report.address

    def lent(self) -> dict[str, int]:
        """The memory its rpc-servers hold for spreads, per device, as last reported."""
        return booked(self.report.rpc_servers)

    # -- spreads across hives (rbee/queen/spread_run.py) ----------------------------------------------
    async def start_rpc_server(self, asked: RpcServerOpen) -> RpcServerInfo:
        with self._errors(JobFailed, f"hive '{self.alias}' did not start an rpc-server"):
            raw = await self.client.call("POST", "/v1/hive/rpc-servers", asked.model_dump_json(), wait_s=90)
        started = RpcServerInfo.model_validate_json(raw)
        self._lent_now(asked.spread, started)
        return started

    async def stop_rpc_servers(self, spread: str) -> None:
        with self._errors(JobFailed, f"hive '{self.alias}' did not stop spread {spread}'s rpc-servers"):
            await self.client.call("DELETE", f"/v1/hive/rpc-servers/{spread}")
        self._lent_now(spread, None)

    def _lent_now(self, spread: str, started: RpcServerInfo | None) -> None:
        """The report's rpc-servers as the hive just answered (not at its next heartbeat), so the memory they
        book counts, or is free again, for the next plan at once: `spread`'s replaced by `started`."""
        kept = [s for s in self.report.rpc_servers if s.spread != spread]
        self.report = self.report.model_copy(update={"rpc_servers": kept + ([started] if started else [])})

    async def open_channel(self, asked: ChannelOpen) -> ChannelInfo:
        with self._errors(JobFailed, f"hive '{self.alias}' did not open a {asked.role} channel end"):
            raw = await self.client.call("POST", "/v1/hive/channels", asked.model_dump_json())
        return ChannelInfo.model_validate_json(raw)

    async def close_channel(self, channel_id: str) -> None:
        with self._errors(JobFailed, f"hive '{self.alias}' did not close channel {channel_id}",
                          by_status={404: JobFailed}):
            await self.client.call("DELETE", f"/v1/hive/channels/{channel_id}")

    def devices(self) -> list[DeviceInfo]:
        return list(self.report.devices)

    async def spawn_worker(self, model: ModelEntry, mode: WorkerMode, memory: int = 0,
                           shape: WorkerShape | None = None, device: str | None = None,
                           spread: SpreadWorker | None = None) -> RemoteWorker:
        self.supervisor.forget_dead()
        placeholder = RemoteWorker(self.alias, worker_id=f"{self.alias}-starting-{time.monotonic_ns()}",
                                   spec=RemoteSpec(model, mode, 0, 0), memory=memory, placeholder=True)
        placeholder.device = device or "cpu"
        self.supervisor.add(placeholder)  # counts its memory while it starts
        body = SpawnWorker(model=model.name, mode=mode, memory=memory, device=device, spread=spread,
                           **_shape(model.name, shape.at_least if shape else None).model_dump()).model_dump_json()
        try:
            with self._errors(WorkerStartError):
                raw = await self.client.call("POST", "/v1/hive/workers", body, wait_s=START_TIMEOUT_S + 30)
        except WorkerStartError as exc:
            placeholder.fail(str(exc))  # kept as the record of a failure, for the back-off
            raise
        finally:
            if placeholder.state is not WorkerState.ERROR:
                self.supervisor.discard(placeholder.id)
        try:
            hosted = hive_trust.trusted_worker(self.report, HostedWorker.model_validate_json(raw), models=[model])
        except (ValidationError, QueenError) as exc:
            message = exc.message if isinstance(exc, QueenError) else "its answer is not a worker"
            raise WorkerStartError(f"hive '{self.alias}' started a worker the queen cannot use: {message}") from exc
        worker = self.supervisor.get(hosted.info.id)  # a heartbeat may have brought it first
        if worker is None:
            worker = RemoteWorker(self.alias, hosted)
            self.supervisor.add(worker)
        else:
            worker.update(hosted)
        return worker

    async def info(self) -> HiveInfo:
        state = "ready" if self.state is HiveState.READY else str(self.state)
        return HiveInfo(alias=self.alias, state=state, address=self.report.address,
                        version=self.report.version, engine=self.report.engine)

    def status(self) -> HiveStatus:
        return HiveStatus(
            alias=self.alias, state=self.state, address=self.report.address, port=self.report.port,
            version=self.report.version, devices=self.report.devices,
            workers=sum(1 for w in self.supervisor.workers() if w.state is WorkerState.READY),
            last_seen_s=round(time.monotonic() - self.last_seen, 1), registrations=self.registrations,
            problem=self.problem,
        )

    async def detail(self, name: str, context_per_slot: int | None = None, slots: int | None = None) -> ModelDetail:
        """The model's GGUF details and memory estimate, read on that hive."""
        query = urlencode({k: v for k, v in (("ctx", context_per_slot), ("slots", slots)) if v is not None})
        with self._errors(ModelUnavailable):
            raw = await self.client.call("GET", _model_path(name) + (f"?{query}" if query else ""))
        return ModelDetail.model_validate_json(raw)

    async def remove(self, name: str) -> ModelEntry:
        """Forget the model on that hive (it stops its workers and deletes what rbee downloaded)."""
        with self._errors(HiveCallFailed, by_status=hive_errors.BY_STATUS):
            raw = await self.client.call("DELETE", _model_path(name), wait_s=120)
        entry = ModelEntry.model_validate_json(raw)
        self.catalog.models = [m for m in self.catalog.models if m.name != entry.name]
        await self.refresh()
        return entry

    async def disk(self) -> HiveDisk:
        models = [m for m in self.catalog.models if not m.missing]
        return HiveDisk(hive=self.alias, models=len(models), models_bytes=sum(m.size_bytes for m in models),
                        free_bytes=self.report.models_free_bytes)

    async def refresh(self) -> None:
        """Ask the hive for its report now (after a pull or a removal), instead of waiting for a heartbeat."""
        try:
            raw = await self.client.call("GET", "/v1/hive/report")
            fresh = self._believed(HiveReport.model_validate_json(raw))
        except (HiveCallFailed, ValueError, QueenError) as exc:
            log.warning("could not refresh the catalog of %s: %s", self.alias, getattr(exc, "message", exc))
            return
        self.catalog.models = fresh.models
        self.report = self.report.model_copy(update={"models": fresh.models,
                                                     "models_free_bytes": fresh.models_free_bytes})
        self.supervisor.reconcile(fresh.workers)

    def _believed(self, fresh: HiveReport) -> HiveReport:
        """A report fetched from the hive, checked as one it sends (rbee/queen/hive_trust.py)."""
        if fresh.alias != self.alias or fresh.tls != self.report.tls:
            raise ReportRefused(f"hive '{self.alias}' answered a report for '{fresh.alias}' (tls={fresh.tls})")
        hive_trust.check_origin(fresh, self.report.address, None)
        return fresh.model_copy(update={"workers": hive_trust.trusted_workers(fresh)})

    async def pull(self, model: str, emit: Emit) -> ModelEntry:
        """Download `model` on that hive, as a job there; its progress is re-emitted here."""
        try:
            asked = HivePull.model_validate({"model": model, "hf_endpoint": os.environ.get("HF_ENDPOINT") or None,
                                             "hf_token": os.environ.get("HF_TOKEN") or None})  # str -> SecretStr
        except ValidationError as exc:  # its text would quote the values, and one of them is the token
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise JobFailed(f"cannot pull onto hive '{self.alias}': invalid {fields} (model, or the queen's "
                            "HF_ENDPOINT / HF_TOKEN)") from None
        return await self._hive_job("/v1/hive/pulls", asked.model_dump_json(), "pull", emit)

    async def copy_in(self, asked: HiveFetch, emit: Emit) -> ModelEntry:
        """Copy a model onto that hive from a peer's share, as a job there; its progress is re-emitted here."""
        return await self._hive_job("/v1/hive/fetches", asked.model_dump_json(), "copy", emit)

    async def open_share(self, asked: ShareOpen) -> ShareOpened:
        """Ask that hive to serve one model's files to one peer for a while (a copy's source)."""
        with self._errors(JobFailed, f"hive '{self.alias}' cannot share {asked.model}"):
            raw = await self.client.call("POST", "/v1/hive/shares", asked.model_dump_json())
        try:
            return ShareOpened.model_validate_json(raw)
        except ValidationError:
            raise JobFailed(f"hive '{self.alias}' answered a share rbee cannot use") from None

    async def _hive_job(self, path: str, body: str, what: str, emit: Emit) -> ModelEntry:
        """Start a job there that ends with a catalog entry, follow it, and take the entry into the catalog."""
        with self._errors(JobFailed, f"hive '{self.alias}' did not start the {what}"):
            raw = await self.client.call("POST", path, body)
        entry = await remote_jobs.run(self.client, remote_jobs.job_id_of(raw), what, emit)
        self.catalog.models = [m for m in self.catalog.models if m.name != entry.name] + [entry]
        await self.refresh()
        return entry

    # -- saved slots (rbee/hive/slot_cache.py) -------------------------------------------------------
    async def save_and_stop(self, worker_id: str, slots: list[SlotSave]) -> Stopped:
        """The hive bounds the saving (its RBEE_SLOT_SAVE_TIMEOUT_MS); the queen waits its own bound and a stop."""
        wait_s = settings.slot_save_timeout_s() + STOP_GRACE_S + 10
        with self._errors(HiveCallFailed, by_status=hive_errors.SLOT_STATUS):
            stopped = await self.supervisor.save_and_stop(worker_id, slots, wait_s)
        if stopped is None:
            raise SlotRefused(f"There is no worker '{worker_id}' on hive '{self.alias}'.", 404)
        return stopped

    async def restore_slot(self, worker_id: str, slot: int, key: str) -> SlotRestored:
        path = f"/v1/hive/workers/{quote(worker_id, safe='')}/slots/{slot}/restore"
        with self._errors(HiveCallFailed, by_status=hive_errors.SLOT_STATUS):
            raw = await self.client.call("POST", path, SlotRestore(key=key).model_dump_json(),
                                         wait_s=RESTORE_TIMEOUT_S + 5)
        return SlotRestored.model_validate_json(raw)

    async def slot_cache(self) -> SlotCacheList:
        with self._errors(HiveCallFailed):
            raw = await self.client.call("GET", "/v1/hive/slot-cache")
        return SlotCacheList.model_validate_json(raw)

    async def start(self) -> None:
        """Nothing to start: the hive runs on its own machine."""

    async def close(self) -> None:
        await self.client.close()
