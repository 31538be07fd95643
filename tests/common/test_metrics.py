"""rbee/common/metrics.py: ColonyCollector (memory per device and per worker, a spread across hives' included),
and the engines' own metrics scraped from workers whatever they (or the hive that reports them) answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from rbee.common import metrics
from rbee.common.metrics import ColonyCollector, engine_metrics
from rbee.common.prom import CollectorRegistry, format_value, generate_latest
from rbee.contracts.workers import WorkerPart, WorkerState

GIB = 2**30


@dataclass
class _Worker:
    id: str
    hive: str
    memory: int
    state: WorkerState = WorkerState.READY
    spec: Any = field(default_factory=lambda: SimpleNamespace(model=SimpleNamespace(name="big")))

    def held(self) -> dict[str, int]:
        return {"cpu": self.memory}


@dataclass
class _Hive:
    alias: str
    workers: list[_Worker]
    lends: dict[str, int]

    @property
    def supervisor(self) -> Any:
        return SimpleNamespace(workers=lambda: self.workers)

    def memory_total(self) -> int:
        return 8 * GIB

    def devices(self) -> list[Any]:
        return [SimpleNamespace(id="cpu", total_bytes=8 * GIB, free_bytes=None)]

    def lent(self) -> dict[str, int]:
        return self.lends


def _scrape(collector: ColonyCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_a_spread_worker_is_listed_under_each_device_with_its_share_and_bytes() -> None:
    main = _Hive("h1", [_Worker("w1", "h1", 3 * GIB)], {})
    helper = _Hive("h2", [], {"cpu": 3 * GIB})  # its rpc-server's booking for w1's spread
    parts = [WorkerPart(hive="h2", device="cpu", share=0.5, memory_bytes=3 * GIB),
             WorkerPart(hive="h1", device="cpu", share=0.5, memory_bytes=3 * GIB)]
    text = _scrape(ColonyCollector([main, helper], parts=lambda: {"w1": parts}))
    for hive in ("h1", "h2"):
        labels = f'{{device="cpu",hive="{hive}",model="big",worker="w1"}}'
        assert f"rbee_worker_memory_bytes{labels} {format_value(3 * GIB)}" in text
        assert f"rbee_worker_device_share{labels} 0.5" in text
        assert f'rbee_hive_memory_bytes{{device="cpu",hive="{hive}",kind="used"}} {format_value(3 * GIB)}' in text


def test_a_worker_on_one_hive_holds_all_of_itself_there() -> None:
    hive = _Hive("h1", [_Worker("w1", "h1", GIB), _Worker("w2", "h1", GIB, WorkerState.STOPPED)], {})
    text = _scrape(ColonyCollector([hive]))
    assert 'rbee_worker_device_share{device="cpu",hive="h1",model="big",worker="w1"} 1.0' in text
    assert 'worker="w2"' not in text  # a stopped worker holds nothing
    assert f'rbee_hive_memory_bytes{{device="cpu",hive="h1",kind="used"}} {format_value(GIB)}' in text


@dataclass
class _Scraped:
    """A ready worker as a hive reports it: where its /metrics are, and its key."""
    id: str
    url: str
    api_key: str = "key"
    hive: str = "h1"
    tls: Any = None
    state: WorkerState = WorkerState.READY
    spec: Any = field(default_factory=lambda: SimpleNamespace(model=SimpleNamespace(name="tiny")))


HUGE = b"llamacpp:x 1\n" * (metrics.MAX_SCRAPE_BYTES // 13 + 1)  # a whole answer, just over the bound
ANSWERS = {  # a worker's answer to GET /metrics, by the path's first segment
    b"good": b"HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\nllamacpp:tokens_predicted_total 5\n# x\n",
    b"huge": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(HUGE), HUGE),
    b"fails": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    b"garbage": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


@pytest.fixture
async def engines() -> AsyncIterator[str]:
    """One server playing every worker: GET /NAME/metrics gets ANSWERS[NAME]; /silent/ never answers."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            name = head.split(b" ")[1].split(b"/")[1]
            if name == b"silent":
                await reader.read()  # until the client gives up
            else:
                writer.write(ANSWERS[name])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


async def test_each_workers_engine_metrics_come_labelled_and_hostile_answers_are_left_out(
        engines: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "ENGINE_SCRAPE_TIMEOUT_S", 0.5)
    workers = [_Scraped("w-good", f"{engines}/good"), _Scraped("w-huge", f"{engines}/huge"),
               _Scraped("w-fails", f"{engines}/fails"), _Scraped("w-garbage", f"{engines}/garbage"),
               _Scraped("w-silent", f"{engines}/silent"), _Scraped("w-gone", "http://127.0.0.1:9/x"),
               _Scraped("w-key", f"{engines}/good", api_key="k\r\nX-Injected: 1"),
               _Scraped("w-url", "ftp://127.0.0.1/x"),
               _Scraped("w-starting", f"{engines}/good", state=WorkerState.STARTING)]
    text = await asyncio.wait_for(engine_metrics(workers), 5)
    assert text == 'llamacpp:tokens_predicted_total{worker="w-good",model="tiny",hive="h1"} 5\n'
