"""The Prometheus text exposition format (0.0.4), for what the daemons count: labelled counters and
histograms, families a collector builds at scrape time, and a registry that writes them all out.

The daemons used prometheus_client for this, which costs an idle daemon ~14 MB (it imports http.server,
wsgiref, email...). The lines written here are the ones prometheus_client's `generate_latest` writes for
the same metrics, less the `_created` series (tests/common/test_prom.py compares the two). Counters and
histograms are updated from the event loop only, so they hold no locks.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = ["CONTENT_TYPE", "Collector", "CollectorRegistry", "Counter", "CounterMetricFamily", "GaugeMetricFamily",
           "Histogram", "MetricFamily", "Sample", "escape_label_value", "format_value", "generate_latest"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def format_value(value: float) -> str:
    """A sample value or bucket bound as Go writes it (prometheus_client's floatToGoString)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python: 1234567.0 -> 1.234567e+06
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _check_names(name: str, labelnames: Sequence[str]) -> None:
    if not _NAME.match(name):
        raise ValueError(f"invalid metric name: {name!r}")
    for label in labelnames:
        if not _LABEL.match(label) or label.startswith("__"):
            raise ValueError(f"invalid label name: {label!r}")


class Sample(NamedTuple):
    name: str  # with its suffix: _total, _bucket, _count, _sum
    labels: dict[str, str]
    value: float


@dataclass
class MetricFamily:
    """One family and its samples; `name` is without a counter's `_total`."""

    name: str
    documentation: str
    type: str
    labels: Sequence[str] = ()
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_names(self.name, self.labels)

    def _add(self, suffix: str, values: Sequence[str], value: float) -> None:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values wanted, got {len(values)}")
        self.samples.append(Sample(self.name + suffix, dict(zip(self.labels, values, strict=True)), value))


class CounterMetricFamily(MetricFamily):
    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name.removesuffix("_total"), documentation, "counter", list(labels))

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self._add("_total", labels, value)


class GaugeMetricFamily(MetricFamily):
    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "gauge", list(labels))

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self._add("", labels, value)


class Collector(Protocol):
    def collect(self) -> Iterable[MetricFamily]: ...


class CollectorRegistry:
    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterable[MetricFamily]:
        for collector in self._collectors:
            yield from collector.collect()


class _Labelled:
    """A metric with label names: one child per distinct label values, listed in the order first seen."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        _check_names(name, labelnames)
        if not labelnames:  # prometheus_client's unlabelled metrics count without .labels(): not written here
            raise ValueError(f"{name}: a counter or histogram needs label names (use a collector's family)")
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], list[float]] = {}
        if registry is not None:
            registry.register(self)

    def _child(self, values: tuple[object, ...], width: int) -> list[float]:
        try:  # the common case: label values seen before, given as the strings they are kept as
            known = self._children.get(values)  # type: ignore[arg-type]
        except TypeError:  # an unhashable value: its str() below
            known = None
        if known is not None:
            return known
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values wanted, got {len(values)}")
        key = tuple(str(v) for v in values)
        if key not in self._children:
            self._children[key] = [0.0] * width
        return self._children[key]

    def _labels(self, key: tuple[str, ...], **extra: str) -> dict[str, str]:
        return dict(zip(self.labelnames, key, strict=True)) | extra

    def collect(self) -> Iterable[MetricFamily]:
        raise NotImplementedError


class _CounterChild:
    def __init__(self, cell: list[float]) -> None:
        self._cell = cell

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self._cell[0] += amount


class Counter(_Labelled):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def labels(self, *values: object) -> _CounterChild:
        return _CounterChild(self._child(values, 1))

    def collect(self) -> Iterable[MetricFamily]:
        family = MetricFamily(self.name, self.documentation, "counter", self.labelnames)
        family.samples = [Sample(self.name + "_total", self._labels(key), cell[0])
                          for key, cell in self._children.items()]
        yield family


class _HistogramChild:
    def __init__(self, cells: list[float], bounds: tuple[float, ...]) -> None:
        self._cells, self._bounds = cells, bounds  # cells: one count per bucket, then the sum

    def observe(self, amount: float) -> None:
        self._cells[-1] += amount
        i = bisect.bisect_left(self._bounds, amount)  # the first bucket whose bound is >= amount
        if i < len(self._bounds) and amount <= self._bounds[i]:  # (NaN is in none)
            self._cells[i] += 1


class Histogram(_Labelled):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry | None = None) -> None:
        if "le" in labelnames:
            raise ValueError("a histogram cannot have a label named 'le'")
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or not bounds:
            raise ValueError("histogram buckets must be given in increasing order")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: object) -> _HistogramChild:
        return _HistogramChild(self._child(values, len(self._bounds) + 1), self._bounds)

    def collect(self) -> Iterable[MetricFamily]:
        family = MetricFamily(self.name, self.documentation, "histogram", self.labelnames)
        for key, cells in self._children.items():
            total = 0.0
            for bound, count in zip(self._bounds, cells, strict=False):
                total += count
                family.samples.append(Sample(self.name + "_bucket", self._labels(key, le=format_value(bound)), total))
            family.samples.append(Sample(self.name + "_count", self._labels(key), total))
            family.samples.append(Sample(self.name + "_sum", self._labels(key), cells[-1]))
        yield family


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}} {format_value(value)}\n" if inner else f"{name} {format_value(value)}\n"


def generate_latest(registry: CollectorRegistry) -> bytes:
    """Every family the registry's collectors give now, as exposition text."""
    out: list[str] = []
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out += [f"# HELP {name} {doc}\n", f"# TYPE {name} {family.type}\n"]
        out += [_sample_line(*sample) for sample in family.samples]
    return "".join(out).encode()
