"""A hive on another machine, as the queen sees it: the same surface as the embedded `Hive`.

The scheduler and the routes use `alias`, `supervisor.workers()/get()/stop()`, `resolve()`,
`need()`, `spawn_worker()`, `memory_total()`, `info()` and `catalog.entries()` on either kind.
Here they are calls to the hive's API (`rbee/hive/app.py`), and worker records the hive's
heartbeats keep current. Requests go straight to the remote workers with their own keys.

A pull onto a remote hive is a job there (`POST /v1/hive/pulls`) that the queen's own job follows
(`GET /v1/hive/jobs/{id}/events`), re-emitting its progress; cancelling the queen's job cancels the
hive's (`DELETE /v1/hive/jobs/{id}`) and waits until the hive says it has cleaned up. The queen's
`HF_ENDPOINT` and `HF_TOKEN` go with each pull, over this authenticated channel, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx
from pydantic import ValidationError

from rbee.common import tls
from rbee.common.hop import HOP
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
from rbee.contracts.jobs import JobCreated, JobEvent, JobEventType
from rbee.contracts.models import ModelDetail, ModelEntry
from rbee.contracts.status import HiveInfo
from rbee.contracts.workers import WorkerInfo, WorkerMode, WorkerState, memory_held
from rbee.hive import model_refs
from rbee.hive.service import Hive, ModelInUse, ModelUnavailable
from rbee.hive.worker import START_TIMEOUT_S, WorkerStartError
from rbee.queen import hive_trust
from rbee.queen.errors import QueenError
from rbee.queen.hive_trust import ReportRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteSpec:
    model: ModelEntry
    mode: WorkerMode
    slots: int
    context_per_slot: int


_EARLIER = (WorkerState.PENDING, WorkerState.DOWNLOADING, WorkerState.STARTING)


def _shape(model: str, at_least: int | None = None) -> WorkerShape:
    """The queen's own settings for a model's workers (its models.toml), sent to remote hives, with the context
    a request needs (`at_least`)."""
    try:
        own = model_refs.model_settings(model)
    except model_refs.BadModelRef:
        return WorkerShape(at_least=at_least)  # the scheduler reports a broken file with the request
    return WorkerShape(context=own.context, slots=own.slots, at_least=at_least)

class RemoteWorker:
    """A worker on a remote hive; its state comes from the hive (its load counters: the queen's, loads.py)."""

    def __init__(self, hive: str, hosted: HostedWorker | None = None, *, worker_id: str = "",
                 spec: RemoteSpec | None = None, memory: int = 0, placeholder: bool = False) -> None:
        self.hive = hive
        self.placeholder = placeholder  # stands for a worker the hive is starting, until it answers
        self.failed_at: float | None = None
        self.error: str | None = None
        self.id = worker_id
        self.state = WorkerState.STARTING
        self.url: str | None = None
        self.api_key = ""
        self.started_at = time.time()
        self.memory = memory
        self.device = "cpu"
        self.device_memory: dict[str, int] = {}
        self.tls: ssl.SSLContext | None = None  # how the queen checks it: its hive's pinned certificate
        if spec is not None:
            self.spec = spec
        if hosted is not None:
            self.update(hosted)

    def update(self, hosted: HostedWorker) -> None:
        info = hosted.info
        self.id = info.id
        self.spec = RemoteSpec(hosted.entry, info.mode, info.slots, info.context_size)
        self.url, self.api_key = info.url, hosted.api_key  # started_at stays the queen's: tie-breaks use it
        self.memory = info.memory_bytes
        self.device = info.device
        self.device_memory = info.device_memory
        if info.state in (WorkerState.STOPPED, WorkerState.ERROR):
            self._set(info.state, info.error)
        elif self.state is WorkerState.DRAINING or (self.state is WorkerState.READY and info.state in _EARLIER):
            pass  # a heartbeat built before the change the queen already knows of: never go backwards
        else:
            self._set(info.state, info.error)

    def _set(self, state: WorkerState, error: str | None = None) -> None:
        if state is WorkerState.ERROR and self.state is not WorkerState.ERROR:
            self.failed_at = time.monotonic()
        self.state = state
        if error:
            self.error = error

    def fail(self, message: str) -> None:
        self._set(WorkerState.ERROR, message)

    def begin_drain(self) -> None:
        if self.state in (WorkerState.READY, WorkerState.UNREACHABLE):
            self.state = WorkerState.DRAINING

    def held(self) -> dict[str, int]:
        """The memory it holds on each of its devices (as its hive said; split evenly while it starts)."""
        return self.device_memory or memory_held(self.device, self.memory)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id, model=self.spec.model.name, hive=self.hive, mode=self.spec.mode, state=self.state,
            url=self.url, slots=self.spec.slots, context_size=self.spec.context_per_slot,
            started_at=self.started_at, error=self.error, memory_bytes=self.memory, device=self.device,
            device_memory=self.held(),
        )


class RemoteSupervisor:
    def __init__(self, hive: RemoteHive) -> None:
        self._hive = hive
        self._workers: dict[str, RemoteWorker] = {}
        self._stopped: set[str] = set()  # stopped here: a heartbeat sent before the hive heard of it must not revive it

    def workers(self) -> list[RemoteWorker]:
        return list(self._workers.values())

    def get(self, worker_id: str) -> RemoteWorker | None:
        return self._workers.get(worker_id)

    def add(self, worker: RemoteWorker) -> None:
        worker.tls = self._hive.tls
        self._workers[worker.id] = worker

    def discard(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def stop(self, worker_id: str) -> RemoteWorker | None:
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return None
        worker.begin_drain()
        if not worker.placeholder:
            try:
                await self._hive.call("DELETE", f"/v1/hive/workers/{quote(worker_id, safe='')}")
                self._stopped.add(worker_id)
            except HiveCallFailed as exc:  # it will be listed (and adopted) again if it still runs there
                log.warning("could not stop %s on %s: %s", worker_id, self._hive.alias, exc)
        worker.state = WorkerState.STOPPED
        return worker

    def forget_dead(self, keep: int = 20) -> None:
        dead = [w for w in self._workers.values() if w.state in (WorkerState.STOPPED, WorkerState.ERROR)]
        for worker in dead[: max(0, len(dead) - keep)]:
            self._workers.pop(worker.id, None)

    def reconcile(self, reported: list[HostedWorker]) -> list[str]:
        """Take the hive's word for which workers exist: adopt new ones, update known ones, drop gone ones;
        the ids adopted."""
        seen, adopted_ids = set(), []
        for hosted in reported:
            seen.add(hosted.info.id)
            known = self._workers.get(hosted.info.id)
            if known is None:
                if hosted.info.state in (WorkerState.STOPPED, WorkerState.ERROR) or hosted.info.id in self._stopped:
                    continue
                log.info("adopting worker %s (%s) on %s", hosted.info.id, hosted.entry.name, self._hive.alias)
                adopted = RemoteWorker(self._hive.alias, hosted)  # unloaded when idle too (queen/executor.py)
                self.add(adopted)
                adopted_ids.append(hosted.info.id)
            else:
                known.update(hosted)
        self._stopped &= seen  # the hive no longer lists them: forget them
        for worker_id, worker in list(self._workers.items()):
            if worker_id not in seen and not worker.placeholder and worker.state is not WorkerState.ERROR:
                self._workers.pop(worker_id)  # the hive forgot it (stopped, or the hive restarted)
        return adopted_ids

    def mark_unreachable(self) -> None:
        for worker in self._workers.values():
            if worker.state is WorkerState.READY:
                worker.state = WorkerState.UNREACHABLE


class HiveCallFailed(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_HIVE_JOB_ID = re.compile(r"^job-[0-9a-f]{12}$")  # what rbee/common/jobs.py makes; nothing else goes in a path
FOLLOW_RETRIES = 5  # a dropped event stream is followed again (from the last event) this many times
CANCEL_WAIT_S = 30.0  # how long a cancelled pull waits for the hive to say it cleaned up


def _model_path(name: str) -> str:
    return "/v1/hive/models/" + quote(name, safe="")


def _too_old(exc: HiveCallFailed) -> bool:
    """A 404 that is not rbee's JSON error: the hive has no such route (it runs an older rbee)."""
    return exc.status == 404 and str(exc) == "HTTP 404"


class _Catalog:
    def __init__(self) -> None:
        self.models: list[ModelEntry] = []

    async def entries(self) -> list[ModelEntry]:
        return list(self.models)


class RemoteHive:
    def __init__(self, report: HiveReport, token: str, tls: ssl.SSLContext | None = None,
                 certificate: str | None = None) -> None:
        self.alias = report.alias
        self.token = token
        self.supervisor = RemoteSupervisor(self)
        self.catalog = _Catalog()
        self.report = report
        self.state = HiveState.READY
        self.last_seen = time.monotonic()
        self.problem: str | None = None
        self.registrations = 0  # registrations heard (the route counts them); heartbeats do not count
        # (model, context, slots, at_least) -> bytes
        self._needs: dict[tuple[str, int | None, int | None, int | None], int] = {}
        self.tls = tls
        self.certificate = certificate  # the PEM `tls` pins, when the queen recorded one for this hive
        self._client = self._new_client(token)
        self.heard_from(report, token)

    def _new_client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), verify=self.tls or True,
                                 headers={"Authorization": f"Bearer {token}", **HOP})

    async def use_tls(self, context: ssl.SSLContext | None, certificate: str | None) -> None:
        """Check this hive and its workers with `context` (pinning `certificate`) from now on: it was re-issued."""
        self.tls, self.certificate, old = context, certificate, self._client
        self._client = self._new_client(self.token)
        for worker in self.supervisor.workers():
            worker.tls = context
        await old.aclose()

    @property
    def base_url(self) -> str:
        host = f"[{self.report.address}]" if ":" in self.report.address else self.report.address
        return f"{'https' if self.report.tls else 'http'}://{host}:{self.report.port}"

    def heard_from(self, report: HiveReport, token: str) -> list[str]:
        """A registration or heartbeat arrived: the hive is (again) ready, and its workers are as it says;
        the ids of the workers adopted from it."""
        if token != self.token:
            self.token = token
            self._client.headers["Authorization"] = f"Bearer {token}"
        if self.state is HiveState.UNREACHABLE:
            log.info("hive %s is back", self.alias)
        self.report, self.state, self.last_seen = report, HiveState.READY, time.monotonic()
        self.catalog.models = report.models
        return self.supervisor.reconcile(report.workers)

    def check_alive(self, timeout_s: float) -> None:
        silent = time.monotonic() - self.last_seen
        if self.state is HiveState.READY and silent > timeout_s:
            log.warning("hive %s is unreachable: no heartbeat for %.0f s", self.alias, silent)
            self.state = HiveState.UNREACHABLE
            self.supervisor.mark_unreachable()

    async def call(self, method: str, path: str, body: str | None = None, wait_s: float | None = None) -> bytes:
        try:
            resp = await self._client.request(
                method, f"{self.base_url}{path}", content=body,
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=wait_s if wait_s is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            problem = tls.certificate_problem(exc)
            if problem is not None:
                raise HiveCallFailed(f"hive '{self.alias}' at {self.base_url} failed the TLS check: {problem}. Its "
                                     "certificate must come from this cluster's CA: after `rbee tls init --force`, "
                                     f"run `rbee tls rotate` (or `rbee hive install {self.alias}`).") from exc
            raise HiveCallFailed(f"hive '{self.alias}' at {self.base_url} did not answer "
                                 f"({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            try:
                message = str(resp.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {resp.status_code}"
            raise HiveCallFailed(message, resp.status_code)
        return resp.content

    # -- what the scheduler and routes use --------------------------------------------------------
    async def resolve(self, model: str) -> ModelEntry:
        return (await self._resolved(model)).entry

    async def _resolved(self, model: str, at_least: int | None = None) -> ResolvedModel:
        shape = _shape(model, at_least)
        try:
            raw = await self.call("POST", "/v1/hive/resolve",
                                  ResolveModel(model=model, **shape.model_dump()).model_dump_json())
        except HiveCallFailed as exc:
            raise ModelUnavailable(str(exc)) from exc
        resolved = ResolvedModel.model_validate_json(raw)
        self._needs[(resolved.entry.name, shape.context, shape.slots, at_least)] = resolved.need
        return resolved

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

    def devices(self) -> list[DeviceInfo]:
        return list(self.report.devices)

    async def spawn_worker(self, model: ModelEntry, mode: WorkerMode, memory: int = 0,
                           shape: WorkerShape | None = None, device: str | None = None) -> RemoteWorker:
        self.supervisor.forget_dead()
        placeholder = RemoteWorker(self.alias, worker_id=f"{self.alias}-starting-{time.monotonic_ns()}",
                                   spec=RemoteSpec(model, mode, 0, 0), memory=memory, placeholder=True)
        placeholder.device = device or "cpu"
        self.supervisor.add(placeholder)  # counts its memory while it starts
        body = SpawnWorker(model=model.name, mode=mode, memory=memory, device=device,
                           **_shape(model.name, shape.at_least if shape else None).model_dump()).model_dump_json()
        try:
            raw = await self.call("POST", "/v1/hive/workers", body, wait_s=START_TIMEOUT_S + 30)
        except HiveCallFailed as exc:
            placeholder.fail(str(exc))  # kept as the record of a failure, for the back-off
            raise WorkerStartError(str(exc)) from exc
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
        try:
            raw = await self.call("GET", _model_path(name) + (f"?{query}" if query else ""))
        except HiveCallFailed as exc:
            raise ModelUnavailable(self._upgrade_hint() if _too_old(exc) else str(exc)) from exc
        return ModelDetail.model_validate_json(raw)

    async def remove(self, name: str) -> ModelEntry:
        """Forget the model on that hive (it stops its workers and deletes what rbee downloaded)."""
        try:
            raw = await self.call("DELETE", _model_path(name), wait_s=120)
        except HiveCallFailed as exc:
            if exc.status == 409:
                raise ModelInUse(str(exc)) from exc
            if _too_old(exc):
                raise HiveCallFailed(self._upgrade_hint(), exc.status) from exc
            if exc.status == 404:
                raise ModelUnavailable(str(exc)) from exc
            raise
        entry = ModelEntry.model_validate_json(raw)
        self.catalog.models = [m for m in self.catalog.models if m.name != entry.name]
        await self.refresh()
        return entry

    def _upgrade_hint(self) -> str:
        return (f"hive '{self.alias}' runs rbee {self.report.version}, which cannot do this for its queen; "
                f"`rbee hive upgrade {self.alias}` brings it up to date")

    async def disk(self) -> HiveDisk:
        models = [m for m in self.catalog.models if not m.missing]
        return HiveDisk(hive=self.alias, models=len(models), models_bytes=sum(m.size_bytes for m in models),
                        free_bytes=self.report.models_free_bytes)

    async def refresh(self) -> None:
        """Ask the hive for its report now (after a pull or a removal), instead of waiting for a heartbeat."""
        try:
            fresh = self._believed(HiveReport.model_validate_json(await self.call("GET", "/v1/hive/report")))
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
        try:
            raw = await self.call("POST", "/v1/hive/shares", asked.model_dump_json())
        except HiveCallFailed as exc:
            raise JobFailed(self._upgrade_hint() if _too_old(exc) else
                            f"hive '{self.alias}' cannot share {asked.model}: {exc}") from exc
        try:
            return ShareOpened.model_validate_json(raw)
        except ValidationError:
            raise JobFailed(f"hive '{self.alias}' answered a share rbee cannot use") from None

    async def _hive_job(self, path: str, body: str, what: str, emit: Emit) -> ModelEntry:
        """Start a job there that ends with a catalog entry, follow it, and take the entry into the catalog."""
        try:
            raw = await self.call("POST", path, body)
        except HiveCallFailed as exc:
            raise JobFailed(self._upgrade_hint() if _too_old(exc) else
                            f"hive '{self.alias}' did not start the {what}: {exc}") from exc
        job_id = JobCreated.model_validate_json(raw).job_id
        if not _HIVE_JOB_ID.fullmatch(job_id):
            raise JobFailed(f"hive '{self.alias}' answered a job id rbee does not make ({job_id[:40]!r})")
        try:
            last = await self._follow(job_id, emit)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._cancel(job_id), CANCEL_WAIT_S)
            raise
        if last.type is JobEventType.ERROR:
            raise JobFailed(last.message)
        if last.type is JobEventType.CANCELLED:
            raise JobFailed(f"the {what} was cancelled on hive '{self.alias}'")
        entry = ModelEntry.model_validate(last.data or {})
        self.catalog.models = [m for m in self.catalog.models if m.name != entry.name] + [entry]
        await self.refresh()
        return entry

    async def _events(self, job_id: str, after: int) -> AsyncIterator[JobEvent]:
        """The hive job's events after `after`, as they come (no read timeout: a job never ends by silence)."""
        headers = {"Last-Event-ID": str(after)} if after >= 0 else None
        async with self._client.stream("GET", f"{self.base_url}/v1/hive/jobs/{job_id}/events", headers=headers,
                                       timeout=httpx.Timeout(30.0, connect=5.0, read=None)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                try:
                    message = str(resp.json()["error"]["message"])
                except (ValueError, KeyError, TypeError):
                    message = f"HTTP {resp.status_code}"
                raise HiveCallFailed(message, resp.status_code)
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    yield JobEvent.model_validate_json(line[5:])

    async def _follow(self, job_id: str, emit: Emit) -> JobEvent:
        """Re-emit the hive job's progress until its terminal event, which is returned. A dropped stream is
        followed again from its last event; a hive that stays away fails the job (and is told to stop it)."""
        after, failures = -1, 0
        while True:
            try:
                async for event in self._events(job_id, after):
                    after, failures = event.seq, 0
                    if event.type.terminal:
                        return event
                    if event.type is not JobEventType.STARTED:
                        emit(event.type, event.message, current=event.current, total=event.total, unit=event.unit,
                             data=event.data)
                reason = "its event stream ended early"
            except HiveCallFailed as exc:  # the hive answered: it lost the job (it restarted), or refuses us
                raise JobFailed(f"hive '{self.alias}' lost the pull: {exc}") from exc
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            failures += 1
            if failures > FOLLOW_RETRIES:
                with contextlib.suppress(HiveCallFailed):
                    await self.call("DELETE", f"/v1/hive/jobs/{job_id}", wait_s=5)
                raise JobFailed(f"lost hive '{self.alias}' during the pull ({reason}); "
                                f"`rbee hive logs {self.alias}` shows what it did")
            await asyncio.sleep(min(0.5 * failures, 3.0))

    async def _cancel(self, job_id: str) -> None:
        """Cancel the hive's job and wait for its terminal event (its partial files are gone by then)."""
        await self.call("DELETE", f"/v1/hive/jobs/{job_id}", wait_s=10)
        async for event in self._events(job_id, -1):
            if event.type.terminal:
                return

    async def install_engine(self, emit: Emit, force: bool = False, backend: str | None = None) -> dict[str, str]:
        raise JobFailed(f"the engine of remote hive '{self.alias}' is installed by `rbee hive install {self.alias}`")

    async def start(self) -> None:
        """Nothing to start: the hive runs on its own machine."""

    async def close(self) -> None:
        await self._client.aclose()


AnyHive = Hive | RemoteHive
