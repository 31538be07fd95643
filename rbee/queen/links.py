"""The links between hives as the queen last measured them, for spreads across hives (rbee/queen/spread_plan.py).

    measure(a, b)   open an echo on one hive for the other's address, then ask the other to measure it
                    (rbee/hive/links.py says what both sides allow); the queen's own embedded hive measures
                    in-process, from the queen's address towards the remote one, and is never the echo
    refresh(...)    measure the pairs of ready hives whose latest measure is older than LINK_MAX_AGE_S; a
                    spread plan calls it first (no loop runs: links are measured only when a spread is
                    planned, or on `rbee status --links`)

The addresses come from the queen's registry (each hive's report: the address it connects from), never from
a caller: `POST /v1/links/measure` names two aliases only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

from rbee.common import tls
from rbee.contracts.hives import HiveState
from rbee.contracts.spread_plans import EchoOpen, EchoOpened, LinkMeasure, LinkMeasured
from rbee.hive import links as hive_links
from rbee.hive.service import Hive
from rbee.queen.copies import address_towards
from rbee.queen.errors import HiveNotFound, InvalidRequest, QueenError
from rbee.queen.hive_client import HiveCallFailed
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.remote_hive import RemoteHive

log = logging.getLogger(__name__)

LINK_MAX_AGE_S = 600.0
MEASURE_WAIT_S = 60.0


class LinkUnmeasured(QueenError):
    status = 502
    code = "link_failed"


class LinkBook:
    def __init__(self, hives: Mapping[str, HiveSeam]) -> None:
        self._hives = hives
        self._latest: dict[tuple[str, str], LinkMeasured] = {}

    def latest(self) -> dict[tuple[str, str], LinkMeasured]:
        """The latest measure of each pair of hives still known, by (source, peer)."""
        return {k: m for k, m in self._latest.items() if k[0] in self._hives and k[1] in self._hives}

    def forget(self, a: str, b: str) -> None:
        """Drop the measures of the link between `a` and `b` (it broke): the next plan measures it again."""
        self._latest.pop((a, b), None)
        self._latest.pop((b, a), None)

    def _ready(self, alias: str) -> HiveSeam:
        hive = self._hives.get(alias)
        if hive is None:
            raise HiveNotFound(f"There is no hive '{alias}'. Known hives: {', '.join(sorted(self._hives))}")
        if hive.state is not HiveState.READY:
            raise LinkUnmeasured(f"hive '{alias}' is {hive.state.value}; its links cannot be measured now")
        return hive

    async def measure(self, a: str, b: str) -> LinkMeasured:
        """Measure the link between hives `a` and `b` (from `a`, unless `b` is the queen's own hive)."""
        if a == b:
            raise InvalidRequest(f"a link joins two hives; both are '{a}'")
        source, peer = self._ready(a), self._ready(b)
        if isinstance(peer, Hive):
            source, peer = peer, source
        if not isinstance(peer, RemoteHive):
            raise InvalidRequest("a link joins two hives, and only one is the queen's own")
        if isinstance(source, RemoteHive):
            towards = source.report.address
        else:
            towards = await asyncio.to_thread(address_towards, peer.report.address, peer.report.port)
        echo = await _open_echo(peer, towards)
        asked = LinkMeasure(peer=peer.alias, peer_url=peer.base_url, echo_id=echo.echo_id, echo_port=echo.port,
                            token=echo.token)
        measured = await _measure_from(source, asked)
        measured = measured.model_copy(update={"source": source.alias, "peer": peer.alias,
                                               "measured_at": time.time()})
        self._latest[(source.alias, peer.alias)] = measured
        log.info("link %s -> %s: %.2f ms median round trip, %.1f MB/s", source.alias, peer.alias,
                 measured.rtt_ms_median, measured.mbps)
        return measured

    async def refresh(self, aliases: Iterable[str] | None = None, max_age_s: float = LINK_MAX_AGE_S) -> list[str]:
        """Measure every pair of ready hives (of `aliases`) with no measure younger than `max_age_s`; what
        failed, as sentences (the plan then refuses those links as not measured)."""
        now, failures = time.time(), []
        ready = sorted(a for a in (aliases if aliases is not None else self._hives)
                       if a in self._hives and self._hives[a].state is HiveState.READY)
        for a, b in itertools.combinations(ready, 2):
            latest = [m for m in (self._latest.get((a, b)), self._latest.get((b, a))) if m is not None]
            if latest and now - max(m.measured_at for m in latest) < max_age_s:
                continue
            if isinstance(self._hives[a], Hive) and isinstance(self._hives[b], Hive):
                continue
            try:
                await self.measure(a, b)
            except QueenError as exc:
                log.warning("could not measure the link %s - %s: %s", a, b, exc.message)
                failures.append(f"{a} - {b}: {exc.message}")
        return failures


async def _open_echo(peer: RemoteHive, towards: str) -> EchoOpened:
    try:
        raw = await peer.client.call("POST", "/v1/hive/links/echoes", EchoOpen(peer_address=towards).model_dump_json())
        return EchoOpened.model_validate_json(raw)
    except HiveCallFailed as exc:
        raise LinkUnmeasured(f"hive '{peer.alias}' did not open an echo: {exc}") from exc
    except ValidationError:
        raise LinkUnmeasured(f"hive '{peer.alias}' answered an echo rbee cannot use") from None


async def _measure_from(source: HiveSeam, asked: LinkMeasure) -> LinkMeasured:
    if isinstance(source, Hive):
        context = source.tls.client_context() if source.tls else tls.cluster_client_context()
        try:
            return await hive_links.measure(source.alias, asked, context)
        except hive_links.LinkFailed as exc:
            raise LinkUnmeasured(str(exc)) from exc
    assert isinstance(source, RemoteHive)
    try:
        raw = await source.client.call("POST", "/v1/hive/links/measure", asked.model_dump_json(),
                                       wait_s=MEASURE_WAIT_S)
        return LinkMeasured.model_validate_json(raw)
    except HiveCallFailed as exc:
        raise LinkUnmeasured(f"hive '{source.alias}' could not measure its link to '{asked.peer}': {exc}") from exc
    except ValidationError:
        raise LinkUnmeasured(f"hive '{source.alias}' answered a measure rbee cannot use") from None
