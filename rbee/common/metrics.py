"""Prometheus metrics both daemons serve: hives, devices and workers read off their state at scrape
time, and the engines' own counters (each worker's `/metrics`, relabelled with worker, model and hive)."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from rbee.common.hop import HOP
from rbee.common.prom import Collector, GaugeMetricFamily, escape_label_value
from rbee.common.upstream import Upstream
from rbee.contracts.workers import WorkerPart, WorkerState

ENGINE_SCRAPE_TIMEOUT_S = 2.0
MAX_SCRAPED = 512  # workers scraped per /metrics request
SCRAPE_CONCURRENCY = 16
MAX_SCRAPE_BYTES = 2**20  # llama-server's own metrics are a few KB
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(.+)$")


class _Worker(Protocol):
    """What the collectors read of a worker, local or remote (read-only: properties or attributes)."""

    @property
    def id(self) -> str: ...

    @property
    def hive(self) -> str: ...

    @property
    def state(self) -> WorkerState: ...

    @property
    def api_key(self) -> str: ...

    @property
    def memory(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def tls(self) -> ssl.SSLContext | None:  # how it is checked, when not with the scrape's default context
        ...

    @property
    def url(self) -> str | None: ...

    def held(self) -> dict[str, int]: ...

    @property
    def spec(self) -> Any: ...


class _Hive(Protocol):
    alias: str

    @property
    def supervisor(self) -> Any: ...

    def memory_total(self) -> int: ...

    def devices(self) -> list[Any]: ...

    def lent(self) -> dict[str, int]: ...  # what its rpc-servers hold for spreads across hives, per device


class ColonyCollector(Collector):
    """Gauges read when scraped: workers by state, memory per hive and device (and per worker), and requests
    waiting per model. `parts` (the queen's): each spread worker's devices on every hive, by worker id."""

    def __init__(self, hives: Any, waiting: Any = None,
                 parts: Callable[[], dict[str, list[WorkerPart]]] | None = None) -> None:
        self._hives = hives  # a mapping or a callable giving the hives now
        self._waiting = waiting  # a callable giving {model: requests waiting}, or None
        self._parts = parts

    def _current(self) -> list[_Hive]:
        hives = self._hives() if callable(self._hives) else self._hives
        return list(hives.values()) if isinstance(hives, dict) else list(hives)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        workers = GaugeMetricFamily("rbee_workers", "Workers by hive, model and state",
                                    labels=["hive", "model", "state"])
        memory = GaugeMetricFamily("rbee_hive_memory_bytes", "Memory a hive may give workers (total), what "
                                   "its workers and its rpc-servers for spreads across hives hold (used) and what "
                                   "the device reports free now (free), per device", labels=["hive", "device", "kind"])
        per = ["worker", "model", "hive", "device"]
        held = GaugeMetricFamily("rbee_worker_memory_bytes", "Memory a live worker holds on each device it uses, "
                                 "on any hive (a spread across hives: on each)", labels=per)
        share = GaugeMetricFamily("rbee_worker_device_share", "A live worker's share of its model on each device it "
                                  "uses (0..1)", labels=per)
        counts: dict[tuple[str, str, str], int] = {}
        models: set[str] = set()
        spread = self._parts() if self._parts is not None else {}
        for hive in self._current():
            for w in hive.supervisor.workers():
                models.add(w.spec.model.name)
                key = (hive.alias, w.spec.model.name, str(w.state))
                counts[key] = counts.get(key, 0) + 1
                if w.state not in (WorkerState.STOPPED, WorkerState.ERROR):
                    for labels, (size, part) in _worker_parts(w, spread.get(w.id)).items():
                        held.add_metric(list(labels), size)
                        share.add_metric(list(labels), part)
            _hive_memory(memory, hive)
        for labels, n in sorted(counts.items()):
            workers.add_metric(list(labels), n)
        yield from (workers, memory, held, share)
        if self._waiting is not None:
            queue = GaugeMetricFamily("rbee_queue_depth", "Requests waiting for a worker, per model", labels=["model"])
            waiting = {model: 0 for model in models} | self._waiting()  # 0 for loaded models: series stay
            for model, n in sorted(waiting.items()):
                queue.add_metric([model], n)
            yield queue


def _worker_parts(w: _Worker, parts: list[WorkerPart] | None) -> dict[tuple[str, ...], tuple[int, float]]:
    """(worker, model, hive, device) -> (bytes, share) for a live worker: its spread's parts, else what it holds."""
    model = w.spec.model.name
    if parts:
        return {(w.id, model, p.hive, p.device): (p.memory_bytes, p.share) for p in parts}
    on = w.held()
    total = sum(on.values())
    return {(w.id, model, w.hive, device): (size, size / total if total else 1 / len(on))
            for device, size in on.items()}


def _hive_memory(memory: GaugeMetricFamily, hive: _Hive) -> None:
    """A hive's total, used (its live workers and its rpc-servers) and free memory, per device."""
    used: dict[str, int] = dict(hive.lent())
    for w in hive.supervisor.workers():
        if w.state not in (WorkerState.STOPPED, WorkerState.ERROR):
            for device, size in w.held().items():
                used[device] = used.get(device, 0) + size
    for device in hive.devices():
        total = hive.memory_total() if device.id == "cpu" else device.total_bytes
        memory.add_metric([hive.alias, device.id, "total"], total)
        memory.add_metric([hive.alias, device.id, "used"], used.get(device.id, 0))
        if device.free_bytes is not None:
            memory.add_metric([hive.alias, device.id, "free"], device.free_bytes)


def _merge(scrapes: Iterable[tuple[dict[str, str], str]]) -> str:
    """Several workers' exposition texts as one: each family's HELP and TYPE once, then all its samples
    (the text format wants a family's samples together), each with the worker's labels added."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for labels, text in scrapes:
        extra = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
        for line in text.splitlines():
            parts = line.split(maxsplit=3)
            if line.startswith("#"):
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = headers.setdefault(parts[2], [])
                    if not any(h.split(maxsplit=2)[1] == parts[1] for h in family):
                        family.append(line)
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, existing, value = match.groups()
            inner = existing[1:-1] + "," + extra if existing and existing != "{}" else extra
            samples.setdefault(name, []).append(f"{name}{{{inner}}} {value}")
    lines: list[str] = []
    for name, rows in samples.items():
        lines += headers.get(name, []) + rows
    return "\n".join(lines) + "\n" if lines else ""


async def engine_metrics(workers: Sequence[_Worker], tls: ssl.SSLContext | None = None) -> str:
    """The ready workers' own /metrics, each sample labelled with its worker, model and hive; a worker
    that does not answer in time is left out of this scrape. The cost is bounded whatever hives report:
    at most MAX_SCRAPED workers, SCRAPE_CONCURRENCY at a time, MAX_SCRAPE_BYTES of text from each.
    With the hops' own client (rbee.common.upstream): a daemon that is scraped does without httpx (~4 MB)."""
    ready = [w for w in workers if w.state is WorkerState.READY and w.url][:MAX_SCRAPED]
    if not ready:
        return ""
    gate = asyncio.Semaphore(SCRAPE_CONCURRENCY)
    client = Upstream(connect_s=ENGINE_SCRAPE_TIMEOUT_S)

    async def one(w: _Worker) -> str:
        async with gate:
            try:
                return await asyncio.wait_for(_scrape(client, w, w.tls or tls), ENGINE_SCRAPE_TIMEOUT_S)
            except (OSError, ValueError):  # no answer in time, a broken one, a URL or key no request can carry
                return ""

    try:
        texts = await asyncio.gather(*(one(w) for w in ready))
    finally:
        await client.close()
    return _merge(({"worker": w.id, "model": w.spec.model.name, "hive": w.hive}, text)
                  for w, text in zip(ready, texts, strict=True))


async def _scrape(client: Upstream, w: _Worker, tls: ssl.SSLContext | None) -> str:
    """One worker's exposition text, or "" when it answers with an error; `BadAnswer` past MAX_SCRAPE_BYTES.
    `tls` checks an https worker (the system's trust when None); its connection is closed after."""
    answer = await client.request("GET", f"{w.url}/metrics", headers={"Authorization": f"Bearer {w.api_key}", **HOP},
                                  tls=tls)
    try:
        return (await answer.read(MAX_SCRAPE_BYTES)).decode("utf-8", "replace") if answer.status == 200 else ""
    finally:
        answer.close()
