"""rbee.common.prom writes what prometheus_client writes for the same metrics (less its `_created` series),
and prometheus_client's parser reads it back as the same families."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client as pc
import prometheus_client.core as pc_core
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rbee.common import prom

BUCKETS = (0.005, 0.5, 1, 2.5, 10000, 12345678)
ODD = 'back\\slash "quoted"\nnew line é'


def _name(line: str) -> str:
    return line.split(" ")[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]


def _without_created(text: bytes) -> str:
    return "".join(line + "\n" for line in text.decode().splitlines() if not _name(line).endswith("_created"))


def _both(fill: Callable[[Any, Any], None]) -> tuple[str, str]:
    """`fill(module, registry)` run once with prometheus_client and once with rbee.common.prom."""
    ours, theirs = prom.CollectorRegistry(), pc.CollectorRegistry()
    fill(prom, ours)
    fill(pc, theirs)
    return prom.generate_latest(ours).decode(), _without_created(pc.generate_latest(theirs))


def _counters(lib: Any, registry: Any) -> None:
    requests = lib.Counter("rbee_requests", "Requests by model\\hive\nand status", ["model", "hive", "status"],
                           registry=registry)
    requests.labels("m", "h1", "200").inc()
    requests.labels("m", "h1", "200").inc(2.5)
    requests.labels(ODD, "-", 503).inc(7)
    requests.labels("zero", "h", "200")  # listed at 0
    lib.Counter("rbee_loops_total", "A name given with _total", ["loop"], registry=registry).labels("a").inc()


def _histograms(lib: Any, registry: Any) -> None:
    ttft = lib.Histogram("rbee_ttft_seconds", "Time to first token", ["model", "hive"], buckets=BUCKETS,
                         registry=registry)
    for value in (0.001, 0.005, 0.3, 2, 9999.5, 1e9):
        ttft.labels("a", "z").observe(value)
    ttft.labels(ODD, "b").observe(0.75)
    ttft.labels("never", "observed")


class _Families:
    def __init__(self, lib: Any) -> None:
        self._core = pc_core if lib is pc else prom

    def collect(self) -> Iterator[Any]:
        saves = self._core.CounterMetricFamily("rbee_slot_saves", "Slots saved")
        saves.add_metric([], 3)
        restores = self._core.CounterMetricFamily("rbee_slot_restores_total", "By result", labels=["result"])
        restores.add_metric(["ok"], 2)
        restores.add_metric([ODD], 1.5)
        held = self._core.GaugeMetricFamily("rbee_slot_cache_bytes", "Bytes held", labels=["hive", "device"])
        for hive, size in (("h1", 1234567890), ("h2", 0), ("h3", 1e22), ("h4", -3.25), ("h5", math.nan),
                           ("h6", math.inf), ("h7", 0.000001)):
            held.add_metric([hive, "cpu"], size)
        empty = self._core.GaugeMetricFamily("rbee_queue_depth", "Nothing waits", labels=["model"])
        yield from (saves, restores, held, empty)


def _families(lib: Any, registry: Any) -> None:
    registry.register(_Families(lib))


@pytest.mark.parametrize("fill", [_counters, _histograms, _families, lambda lib, registry: None],
                         ids=["counters", "histograms", "families", "empty"])
def test_the_text_is_prometheus_clients(fill: Callable[[Any, Any], None]) -> None:
    ours, theirs = _both(fill)
    assert ours == theirs


def _parsed(text: str) -> list[tuple[str, str, str, list[Any]]]:
    return [(f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)]


def test_prometheus_clients_parser_reads_ours_as_the_same_families() -> None:
    def everything(lib: Any, registry: Any) -> None:
        _counters(lib, registry)
        _histograms(lib, registry)
        _families(lib, registry)

    ours, theirs = _both(everything)
    parsed = _parsed(ours)
    assert [name for name, *_ in parsed] == ["rbee_requests", "rbee_loops", "rbee_ttft_seconds", "rbee_slot_saves",
                                             "rbee_slot_restores", "rbee_slot_cache_bytes", "rbee_queue_depth"]
    assert str(parsed) == str(_parsed(theirs))  # str: NaN is not equal to itself
    assert ("rbee_requests_total", {"model": ODD, "hive": "-", "status": "503"}, 7.0) in parsed[0][3]


def test_values_are_written_as_go_writes_them() -> None:
    cases = {1.0: "1.0", 0.005: "0.005", 1234567.0: "1.234567e+06", 100000.0: "100000.0", 1e22: "1e+22",
             -2.5: "-2.5", math.inf: "+Inf", -math.inf: "-Inf", math.nan: "NaN", 3: "3.0"}
    assert {prom.format_value(v): text for v, text in cases.items()} == {text: text for text in cases.values()}


def test_the_content_type_is_the_format_written() -> None:
    assert prom.CONTENT_TYPE == pc.exposition.CONTENT_TYPE_PLAIN_0_0_4


@pytest.mark.parametrize(("make", "message"), [
    (lambda: prom.Counter("1bad", "doc", ["a"]), "invalid metric name: '1bad'"),
    (lambda: prom.Counter("ok", "doc", ["bad-label"]), "invalid label name: 'bad-label'"),
    (lambda: prom.Counter("ok", "doc", ["__reserved"]), "invalid label name: '__reserved'"),
    (lambda: prom.Counter("c", "doc", []), "needs label names"),
    (lambda: prom.Histogram("h", "doc", ["le"], buckets=(1,)), "cannot have a label named 'le'"),
    (lambda: prom.Histogram("h", "doc", ["a"], buckets=(2, 1)), "increasing order"),
    (lambda: prom.Histogram("h", "doc", ["a"], buckets=()), "increasing order"),
    (lambda: prom.Counter("c", "doc", ["a", "b"]).labels("x"), "2 label values wanted, got 1"),
    (lambda: prom.Counter("c", "doc", ["a"]).labels("x").inc(-1), "non-negative"),
    (lambda: prom.GaugeMetricFamily("g", "doc", labels=["a"]).add_metric([], 1), "1 label values wanted, got 0"),
])
def test_misuse_is_refused_with_a_clear_message(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_a_counter_keeps_counting_through_its_children() -> None:
    registry = prom.CollectorRegistry()
    counter = prom.Counter("c", "doc", ["a"], registry=registry)
    child = counter.labels("x")
    child.inc()
    counter.labels("x").inc(2)
    assert prom.generate_latest(registry).decode().splitlines()[-1] == 'c_total{a="x"} 3.0'


def test_label_values_given_as_numbers_or_strings_are_one_child() -> None:
    registry = prom.CollectorRegistry()
    counter = prom.Counter("c", "doc", ["a", "status"], registry=registry)
    counter.labels("x", 200).inc()
    counter.labels("x", "200").inc()  # the fast path (strings seen before) finds the child the number made
    counter.labels("x", 200).inc()
    assert [line for line in prom.generate_latest(registry).decode().splitlines() if not line.startswith("#")] == [
        'c_total{a="x",status="200"} 3.0']
