"""Getting a model onto the hive that needs it: a copy from another hive over the LAN first, the hub last.

    (1) the target already has it: done
    (2) each reachable hive that holds it (by catalog name, or the hub name it was pulled as), in turn, the
        remote ones by alias, then the queen's own: the source opens a share for the target's address
        (`POST /v1/hive/shares`, the source's join token; the embedded hive in-process), the target fetches
        from the source directly (`POST /v1/hive/fetches`, a job there the queen follows; from the embedded
        hive it reads the queen's own port, rbee/queen/share_routes.py); a failed copy (the source vanished,
        a sha256 that does not match, a name outside the models folder) is reported and the next source is
        tried
    (3) the hub, when the caller allows it (`rbee model pull` and the dashboard do; the OpenAI API only with
        RBEE_API_PULLS=hub), through the target's own pull (which also explains a name that is no model)
    (4) else `JobFailed`, saying why

One copy per (hive, model) runs at a time: a second caller waits for the first one's and sees its progress.
A copy the scheduler started for a request goes on when that request leaves (the next one uses it); a copy a
job started is cancelled with the last job waiting for it.

The embedded local hive is a source for remote targets (its files are served on the queen's port) and a
target for remote sources (it fetches with its own client, from the queen's address towards that hive).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rbee.common import settings
from rbee.common.jobs import Emit, JobFailed
from rbee.contracts.copies import HiveFetch, ShareOpen
from rbee.contracts.hives import HiveState
from rbee.contracts.jobs import JobEventType
from rbee.contracts.models import ModelEntry
from rbee.hive import model_refs
from rbee.hive.service import Hive
from rbee.queen import hive_errors
from rbee.queen.errors import QueueFull
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.remote_hive import RemoteHive

log = logging.getLogger(__name__)

SHARE_S = 3600.0


@dataclass(frozen=True)
class Placed:
    """Where a model now is, and where its files came from: 'already there', 'hive ALIAS' or 'the hub'."""

    entry: ModelEntry
    origin: str


def address_towards(host: str, port: int) -> str:
    """This machine's address on the way to `host` (what a hive there sees the queen's process come from)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))  # UDP: no packet is sent, the kernel only picks the route
        return str(probe.getsockname()[0])


def _queen_url_towards(target: RemoteHive) -> str:
    address = address_towards(target.report.address, target.report.port)
    host = f"[{address}]" if ":" in address else address
    return f"{'https' if settings.queen_tls() else 'http'}://{host}:{settings.queen_port()}"


@dataclass
class _Copy:
    task: asyncio.Task[Placed] | None = None
    emits: list[Emit] = field(default_factory=list)
    keep: bool = False  # a request's copy goes on when nobody waits any more

    def emit(self, type: JobEventType = JobEventType.PROGRESS, message: str = "", **kw: Any) -> None:
        for emit in list(self.emits):
            emit(type, message, **kw)


class Copies:
    def __init__(self, hives: Mapping[str, HiveSeam]) -> None:
        self._hives = hives
        self._running: dict[tuple[str, str], _Copy] = {}

    async def sources(self, model: str, target: HiveSeam) -> list[tuple[HiveSeam, ModelEntry]]:
        """The reachable hives other than `target` that hold `model`: remote ones by alias, then the embedded
        one (for a remote target: its share is served on the queen's port)."""
        found: list[tuple[HiveSeam, ModelEntry]] = []
        for hive in sorted(self._hives.values(), key=lambda h: (isinstance(h, Hive), h.alias)):
            if hive is not target and hive.state is HiveState.READY and (entry := await hive.holds(model)):
                found.append((hive, entry))
        return found

    async def ensure_on(self, target: HiveSeam, model: str, emit: Emit, *, allow_hub: bool,
                        keep: bool = False) -> Placed:
        """`model` on `target`: already there, copied from a peer, or (when allowed) pulled from the hub."""
        key = (target.alias, model)
        running = self._running.get(key)
        if running is None:
            running = _Copy()
            running.task = asyncio.get_running_loop().create_task(
                self._place(target, model, allow_hub, running.emit), name=f"copy-{model}-{target.alias}")
            running.task.add_done_callback(lambda _: self._running.pop(key, None))
            self._running[key] = running
        else:
            emit(message=f"{model} is already being copied onto {target.alias}: waiting for that copy")
        running.emits.append(emit)
        running.keep = running.keep or keep
        assert running.task is not None
        try:
            return await asyncio.shield(running.task)
        except asyncio.CancelledError:
            if not running.emits[1:] and not running.keep:  # the last one waiting, and nobody else will
                running.task.cancel()
                await asyncio.gather(running.task, return_exceptions=True)
            raise
        finally:
            running.emits.remove(emit)

    async def _place(self, target: HiveSeam, model: str, allow_hub: bool, emit: Emit) -> Placed:
        if _revision(model) and allow_hub:  # a hub revision: only the hub knows which files it means
            return Placed(await target.pull(model, emit), "the hub")
        # (1)
        entry = await target.holds(model)
        if entry is not None:
            emit(message=f"{entry.name} is already on {target.alias}")
            return Placed(entry, "already there")
        # (2)
        failures = []
        for source, held in await self.sources(model, target):
            try:
                return Placed(await self._copy(source, held, target, emit), f"hive {source.alias}")
            except JobFailed as exc:
                log.warning("copy of %s from %s onto %s failed: %s", held.name, source.alias, target.alias, exc)
                failures.append(f"from hive '{source.alias}': {exc}")
                emit(message=f"the copy from hive '{source.alias}' failed ({exc}); trying the next source")
        # (3) the target's own pull: the hub for a hub name; for any other name, the hive's own answer
        if allow_hub:
            if _is_hub(model):
                emit(message=f"no other hive has {model}: pulling it from the hub onto {target.alias}"
                     if not failures else f"pulling {model} from the hub onto {target.alias}")
            return Placed(await target.pull(model, emit), "the hub" if _is_hub(model) else "already there")
        # (4)
        if failures:
            raise JobFailed(f"could not copy {model} onto {target.alias}: " + "; ".join(failures))
        why = "and the OpenAI API downloads from the hub only with RBEE_API_PULLS=hub" if _is_hub(model) else \
            "and it is not a hub name"
        raise JobFailed(f"no reachable hive other than {target.alias} has {model}, {why}")

    async def _copy(self, source: HiveSeam, held: ModelEntry, target: HiveSeam, emit: Emit) -> ModelEntry:
        if isinstance(target, RemoteHive):
            peer = target.report.address
        else:
            assert isinstance(source, RemoteHive)
            peer = await asyncio.to_thread(address_towards, source.report.address, source.report.port)
        emit(message=f"copying {held.name} from hive '{source.alias}' onto {target.alias} over the LAN")
        share = await source.open_share(ShareOpen(model=held.name, peer_address=peer, expires_s=SHARE_S))
        if isinstance(source, RemoteHive):
            url, from_queen = source.base_url, False
        else:  # the target reads it at its own queen_url; this one only names the queen
            assert isinstance(target, RemoteHive)
            url, from_queen = await asyncio.to_thread(_queen_url_towards, target), True
        asked = HiveFetch(source=source.alias, source_url=url, share_id=share.share_id, token=share.token,
                          entry=share.entry, files=share.files, from_queen=from_queen)
        return await target.copy_in(asked, emit)


def _revision(model: str) -> str | None:
    try:
        return model_refs.parse(model).revision
    except model_refs.BadModelRef:
        return None


def _is_hub(model: str) -> bool:
    try:
        return model_refs.parse(model).is_hub
    except model_refs.BadModelRef:
        return False


def logged(type: JobEventType = JobEventType.PROGRESS, message: str = "", **kw: Any) -> None:
    if message and kw.get("current") is None:  # steps, not the byte counts
        log.info("%s", message)


async def for_request(copies: Copies, target: HiveSeam, model: str, deadline: float) -> bool:
    """For a request pinned to `target`, which lacks `model`: copy it there from another hive (or the hub with
    RBEE_API_PULLS=hub), waiting until `deadline` (time.monotonic()). False when no copy can help (no source,
    and no hub allowed): the caller reports the model as not found. The copy goes on if the request leaves."""
    allow_hub = settings.api_pulls_from_hub()
    if not await copies.sources(model, target) and not (allow_hub and _is_hub(model)):
        return False
    log.info("%s is not on hive %s, where the request must run: copying it there first", model, target.alias)
    try:
        await asyncio.wait_for(copies.ensure_on(target, model, logged, allow_hub=allow_hub, keep=True),
                               max(deadline - time.monotonic(), 0.01))
    except TimeoutError:
        raise QueueFull(f"The request timed out while '{model}' was copied onto hive '{target.alias}'; the copy "
                        "goes on: retry shortly.", headers={"Retry-After": "10"}) from None
    except JobFailed as exc:
        raise hive_errors.queen_error(exc, f"'{model}' is not on hive '{target.alias}' and could not be brought "
                                      "there") from exc
    return True


async def ensure_on(copies: Copies, target: HiveSeam, model: str, emit: Emit, *, allow_hub: bool) -> Placed:
    """See `Copies.ensure_on`."""
    return await copies.ensure_on(target, model, emit, allow_hub=allow_hub)


async def for_placement(copies: Copies, target: HiveSeam, model: str) -> Placed:
    """A copy the scheduler's placement chose (copy_placement.py): from a peer (the hub only with
    RBEE_API_PULLS=hub). It goes on when the request that caused it leaves: the next one uses it."""
    try:
        return await copies.ensure_on(target, model, logged, allow_hub=settings.api_pulls_from_hub(), keep=True)
    except JobFailed as exc:
        raise hive_errors.queen_error(exc, f"'{model}' could not be copied onto hive '{target.alias}', where "
                                      "placement chose to run it") from exc
