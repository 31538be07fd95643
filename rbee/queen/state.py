"""Everything a running queen holds, built once at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from starlette.requests import Request

from rbee.common import paths, settings, supervise, tls
from rbee.common.jobs import JobRunner
from rbee.common.metrics import ColonyCollector
from rbee.common.version import current as current_version
from rbee.contracts.status import LoopHealth, QueenHealth
from rbee.hive import model_refs
from rbee.hive.models_file import CHECK_INTERVAL_S
from rbee.hive.service import Hive
from rbee.queen.auth import Keyring, Principal, read_or_create_admin_token
from rbee.queen.copies import Copies
from rbee.queen.db import QueenDB
from rbee.queen.errors import QueenError
from rbee.queen.executor import REAP_INTERVAL_S
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.links import LinkBook
from rbee.queen.metrics import QueenMetrics
from rbee.queen.policy import Policy
from rbee.queen.proxy import Forwarder
from rbee.queen.remote_hive import RemoteHive
from rbee.queen.scheduler import Scheduler
from rbee.queen.spread_run import SPREAD_CHECK_S, Spreads
from rbee.queen.usage import UsageMeter


def queen_state(request: Request) -> QueenState:
    """The state of the queen serving `request`."""
    state: QueenState = request.app.state.queen
    return state


@dataclass
class QueenState:
    hives: dict[str, HiveSeam]  # the embedded local hive (unless RBEE_LOCAL_HIVE=0) and the registered remote ones
    scheduler: Scheduler
    db: QueenDB
    keyring: Keyring
    usage: UsageMeter
    hive_tls: ssl.SSLContext | None = None  # the cluster CA, to check TLS hives and their workers
    forwarder: Forwarder = field(default_factory=Forwarder)
    metrics: QueenMetrics = field(init=False)
    jobs: JobRunner = field(default_factory=JobRunner)
    started_at: float = field(default_factory=time.time)
    listen_host: str | None = None
    loop_health: dict[str, LoopHealth] = field(default_factory=dict)  # the background loops, for /v1/status
    copies: Copies = field(init=False)  # models onto the hive that needs them: peers first (rbee/queen/copies.py)
    links: LinkBook = field(init=False)  # the links between hives as last measured (rbee/queen/links.py)
    spreads: Spreads = field(init=False)  # spreads across hives being run (rbee/queen/spread_run.py)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(cls) -> QueenState:
        hives: dict[str, HiveSeam] = {}
        if settings.local_hive():
            hives["localhost"] = Hive("localhost")
        db = QueenDB(paths.queen_db_file())
        keyring = Keyring(db, read_or_create_admin_token(paths.admin_token_file()))
        client_tls = tls.cluster_client_context()
        return cls(hives=hives, scheduler=Scheduler(hives, Policy.from_env()), db=db, keyring=keyring,
                   usage=UsageMeter(db), hive_tls=client_tls, forwarder=Forwarder(client_tls))

    def __post_init__(self) -> None:
        self.metrics = QueenMetrics(ColonyCollector(lambda: self.hives, self.scheduler.waiting,
                                                    lambda: self.spreads.parts_by_worker()),
                                    self.scheduler.executor.slot_record)
        self.copies = Copies(self.hives)
        self.links = LinkBook(self.hives)
        self.spreads = Spreads(self.hives, forget_link=self.links.forget)
        self.scheduler.executor.copies = self.copies  # brings a pinned request's model over, or one to a hive with room

    def health(self) -> QueenHealth:
        return QueenHealth(version=current_version(), pid=os.getpid(), started_at=self.started_at,
                           listen_host=self.listen_host)

    async def start(self) -> None:
        await asyncio.to_thread(self.scheduler.policy.reload_if_changed)
        await model_refs.models_file.refresh()  # read before the first request; the models-toml loop keeps it current
        for hive in self.hives.values():
            await hive.start()
        from rbee.queen.spread_routes import load_spread  # (it reads this state: imported once both exist)

        self.scheduler.spread = partial(load_spread, self)
        # Each periodic loop as (interval, one pass); the usage loop flushes once more on close.
        loops: dict[str, tuple[Callable[[], float], supervise.Step]] = {
            "reap-idle": (lambda: REAP_INTERVAL_S, self.scheduler.reap_idle),
            "slot-listings": (lambda: REAP_INTERVAL_S, self.scheduler.list_saved_slots),
            "watch-hives": (lambda: min(1.0, settings.heartbeat_s()), self._watch_hives),
            "usage": (settings.usage_flush_s, self.usage.flush),
            "prune-audit": (lambda: 3600.0, self._prune_audit),
            "models-toml": (lambda: CHECK_INTERVAL_S, model_refs.models_file.refresh),
            "spreads": (lambda: SPREAD_CHECK_S, self.spreads.check)}
        for name, (seconds, step) in loops.items():
            self.loop_health[name] = LoopHealth()
            self.metrics.loop_failures.labels(name)  # listed at 0 from the start
            loop = supervise.every(seconds, step, first=name == "prune-audit", on_pass=partial(self._loop_ran, name))
            self._tasks.append(supervise.start(name, loop, on_failure=self._loop_failed))

    def _loop_ran(self, name: str) -> None:
        health = self.loop_health[name]
        health.passes += 1
        health.last_pass_at = time.time()

    def _loop_failed(self, name: str, what: str) -> None:
        health = self.loop_health[name]
        health.failures += 1
        health.last_error, health.last_failed_at = what, time.time()
        self.metrics.loop_failures.labels(name).inc()

    async def audit(self, who: Principal, request: Request, action: str, target: str, detail: str = "") -> None:
        """Append an administrative action to the audit log: who, from where, what."""
        source = request.client.host if request.client else "?"
        await self.db.audit(who.actor, source, action, target, detail)

    async def _prune_audit(self) -> None:
        """One hourly pass: drop audit entries older than RBEE_AUDIT_RETENTION."""
        with contextlib.suppress(QueenError):
            await self.db.prune_audit(time.time() - settings.audit_retention_s())

    async def _watch_hives(self) -> None:
        """One pass: mark remote hives unreachable whose heartbeats stopped (the embedded one has none)."""
        timeout = settings.hive_timeout_s()
        for hive in list(self.hives.values()):
            if isinstance(hive, RemoteHive):
                hive.check_alive(timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(QueenError):
            await self.usage.flush()
        await self.jobs.close()
        await self.spreads.close()
        for hive in self.hives.values():
            await hive.close()
        await self.forwarder.close()
