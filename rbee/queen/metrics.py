"""What the queen counts as requests pass (Prometheus): requests, tokens, time to first token, speed."""

from __future__ import annotations

from collections.abc import Iterator

from rbee.common.metrics import ColonyCollector
from rbee.common.prom import (
    Collector,
    CollectorRegistry,
    Counter,
    CounterMetricFamily,
    GaugeMetricFamily,
    Histogram,
    generate_latest,
)
from rbee.contracts.status import Traffic
from rbee.queen.proxy import Outcome
from rbee.queen.slot_restore import SlotRecord

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
NO_HIVE = "-"  # a request refused before any worker was chosen


class SlotCollector(Collector):
    """KV caches kept across unloads, as the queen's SlotRecord counts them (slot_restore.py, kv_resume.py)."""

    def __init__(self, record: SlotRecord) -> None:
        self._record = record

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        saves = CounterMetricFamily("rbee_slot_saves", "Slots of unloaded or evicted workers saved on their hive")
        saves.add_metric([], self._record.saves)
        restores = CounterMetricFamily("rbee_slot_restores", "Saved slots restored before a request, by result "
                                       "(failed: the request ran with a normal prefill)", labels=["result"])
        for result, count in sorted(self._record.restores.items()):
            restores.add_metric([result], count)
        held = GaugeMetricFamily("rbee_slot_cache_bytes", "Bytes of saved slots each hive holds, as the queen "
                                 "knows from saves and the hives' listings", labels=["hive"])
        for hive, size in sorted(self._record.bytes_per_hive().items()):
            held.add_metric([hive], size)
        yield from (saves, restores, held)


class QueenMetrics:
    def __init__(self, colony: ColonyCollector, slots: SlotRecord | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(colony)
        if slots is not None:
            self.registry.register(SlotCollector(slots))
        self.requests = Counter("rbee_requests", "Inference requests by model, hive and HTTP status",
                                ["model", "hive", "status"], registry=self.registry)
        self.tokens = Counter("rbee_tokens", "Tokens by model, hive and kind (prompt, completion)",
                              ["model", "hive", "kind"], registry=self.registry)
        self.ttft = Histogram("rbee_time_to_first_token_seconds", "From forwarding a request to its first byte",
                              ["model", "hive"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.traffic = Traffic()  # the same counts, summed, for /v1/status and the dashboard
        self.loop_failures = Counter("rbee_background_failures", "Failures of the queen's background loops (each "
                                     "is started again)", ["loop"], registry=self.registry)
        self.hits = Counter("rbee_affinity_hits", "Requests served by the worker holding their prompt's prefix "
                            "(prefix-cache affinity)", ["model"], registry=self.registry)
        self.misses = Counter("rbee_affinity_misses", "Requests with a prompt whose prefix no free worker held",
                              ["model"], registry=self.registry)
        self.cached = Counter("rbee_prompt_tokens_cached", "Prompt tokens the engines took from their KV cache",
                              ["model", "hive"], registry=self.registry)
        self.speed = Histogram("rbee_generation_tokens_per_second", "Completion tokens per second of each answer",
                               ["model", "hive"], buckets=SPEED_BUCKETS, registry=self.registry)

    def served(self, outcome: Outcome, prompt: int, completion: int, cached: int = 0) -> None:
        model, hive = outcome.model, outcome.hive
        self.requests.labels(model, hive, str(outcome.status)).inc()
        if cached:
            self.cached.labels(model, hive).inc(cached)
        self._count(outcome.status, prompt, completion)
        self.tokens.labels(model, hive, "prompt").inc(prompt)
        self.tokens.labels(model, hive, "completion").inc(completion)
        if outcome.status >= 400:
            return
        self.ttft.labels(model, hive).observe(outcome.ttft_s)
        generating = outcome.duration_s - outcome.ttft_s
        if completion > 1 and generating > 0:  # a stream: tokens after the first, over the time they took
            self.speed.labels(model, hive).observe((completion - 1) / generating)
        elif completion > 0 and outcome.duration_s > 0:
            self.speed.labels(model, hive).observe(completion / outcome.duration_s)

    def affinity(self, model: str, hit: bool | None) -> None:
        """A request was given a worker: where its prefix was (`hit`), or not; None: nothing to match."""
        if hit is not None:
            (self.hits if hit else self.misses).labels(model).inc()

    def refused(self, model: str, status: int) -> None:
        """A request answered before any worker: `model` must be a known name (labels are kept forever)."""
        self.requests.labels(model, NO_HIVE, str(status)).inc()
        self._count(status)

    def _count(self, status: int, prompt: int = 0, completion: int = 0) -> None:
        t = self.traffic
        t.requests += 1
        t.errors += int(status >= 400)
        t.prompt_tokens += prompt
        t.completion_tokens += completion

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
