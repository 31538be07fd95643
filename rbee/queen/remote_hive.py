"""A hive on another machine, as the queen sees it: the same surface as the embedded `Hive`.

The scheduler and the routes use `alias`, `supervisor.workers()/get()/stop()`, `resolve()`,
`need()`, `spawn_worker()`, `memory_total()`, `info()` and `catalog.list()` on either kind.
Here they are calls to the hive's API (`rbee/hive/app.py`), and worker records the hive's
heartbeats keep current. Requests go straight to the remote workers with their own keys.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from rbee.common import settings, tls
from rbee.common.hop import HOP
from rbee.common.jobs import Emit, JobFailed
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
from rbee.contracts.status import HiveInfo
from rbee.contracts.workers import WorkerInfo, WorkerMode, WorkerState, memory_held
from rbee.hive import model_refs
from rbee.hive.service import Hive, ModelUnavailable
from rbee.hive.worker import START_TIMEOUT_S, WorkerStartError
from rbee.queen import hive_trust, keep_alive
from rbee.queen.errors import QueenError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteSpec:
    model: ModelEntry
    mode: WorkerMode
    slots: int
    context_per_slot: int


_EARLIER = (WorkerState.PENDING, WorkerState.DOWNLOADING, WorkerState.STARTING)



def _shape(model: str) -> WorkerShape:
    """The queen's own settings for a model's workers (its models.toml), sent to remote hives."""
    try:
        own = model_refs.model_settings(model)
    except model_refs.BadModelRef:
        return WorkerShape()  # the scheduler reports a broken file with the request
    return WorkerShape(context=own.context, slots=own.slots)

class RemoteWorker:
    """A worker on a remote hive; its state comes from the hive, its load counters live here."""

    def __init__(self, hive: str, hosted: HostedWorker | None = None, *, worker_id: str = "",
                 spec: RemoteSpec | None = None, memory: int = 0, placeholder: bool = False) -> None:
        self.hive = hive
        self.placeholder = placeholder  # stands for a worker the hive is starting, until it answers
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.expires_at: float | None = None
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
            started_at=self.started_at, in_flight=self.in_flight, error=self.error, memory_bytes=self.memory,
            device=self.device, device_memory=self.held(),
            idle_unload_in_s=max(0.0, self.expires_at - time.monotonic()) if self.expires_at is not None else None,
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
                adopted = RemoteWorker(self._hive.alias, hosted)
                hold = keep_alive.parse(settings.keep_alive_default()) or 0.0
                adopted.expires_at = None if hold == keep_alive.FOREVER else time.monotonic() + hold
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


class _Catalog:
    def __init__(self) -> None:
        self.models: list[ModelEntry] = []

    async def list(self) -> list[ModelEntry]:
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
        self._needs: dict[tuple[str, int | None, int | None], int] = {}  # (model, context, slots) -> bytes
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

    async def _resolved(self, model: str) -> ResolvedModel:
        shape = _shape(model)
        try:
            raw = await self.call("POST", "/v1/hive/resolve",
                                  ResolveModel(model=model, **shape.model_dump()).model_dump_json())
        except HiveCallFailed as exc:
            raise ModelUnavailable(str(exc)) from exc
        resolved = ResolvedModel.model_validate_json(raw)
        self._needs[(resolved.entry.name, shape.context, shape.slots)] = resolved.need
        return resolved

    async def need(self, model: ModelEntry) -> int:
        """What the hive estimated for the model with the queen's settings for it (else the hive's own)."""
        shape = _shape(model.name)
        key = (model.name, shape.context, shape.slots)
        if key not in self._needs:
            await self._resolved(model.name)
        return self._needs[key]

    def memory_total(self) -> int:
        return self.report.memory_total

    def devices(self) -> list[DeviceInfo]:
        return list(self.report.devices)

    async def spawn_worker(self, model: ModelEntry, mode: WorkerMode, memory: int = 0,
                           device: str | None = None) -> RemoteWorker:
        self.supervisor.forget_dead()
        placeholder = RemoteWorker(self.alias, worker_id=f"{self.alias}-starting-{time.monotonic_ns()}",
                                   spec=RemoteSpec(model, mode, 0, 0), memory=memory, placeholder=True)
        placeholder.device = device or "cpu"
        self.supervisor.add(placeholder)  # counts its memory while it starts
        body = SpawnWorker(model=model.name, mode=mode, memory=memory, device=device,
                           **_shape(model.name).model_dump()).model_dump_json()
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
        raise ModelUnavailable(f"model details are read on the local hive only; on '{self.alias}' run "
                               f"`rbee model info {name}` on that machine")

    async def remove(self, name: str) -> ModelEntry:
        raise ModelUnavailable(f"models on the remote hive '{self.alias}' are removed on that machine "
                               f"(`rbee model rm {name}` there)")

    async def pull(self, model: str, emit: Emit) -> ModelEntry:
        raise JobFailed(f"pulling onto the remote hive '{self.alias}' is not supported yet: run "
                        f"`rbee model pull {model}` on that machine, or give a path that hive can read")

    async def install_engine(self, emit: Emit, force: bool = False, backend: str | None = None) -> dict[str, str]:
        raise JobFailed(f"the engine of remote hive '{self.alias}' is installed by `rbee hive install {self.alias}`")

    async def start(self) -> None:
        """Nothing to start: the hive runs on its own machine."""

    async def close(self) -> None:
        await self._client.aclose()


AnyHive = Hive | RemoteHive
