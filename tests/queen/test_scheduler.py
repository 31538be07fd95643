"""The scheduler's decision (rbee/queen/decide.py), its admission queue (rbee/queen/admission.py) and the queen's
counters per worker (rbee/queen/loads.py), alone: fake hives, views and a fake clock, no processes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rbee.contracts.hives import DeviceInfo
from rbee.queen import decide
from rbee.queen.admission import Admission
from rbee.queen.device_views import device_views
from rbee.queen.errors import ClientGone, DeadlineExceeded, ModelTooLargeError, QueueFull, WorkerUnavailable
from rbee.queen.executor import Executor
from rbee.queen.loads import Loads
from rbee.queen.placement import DeviceView, WorkerView
from rbee.queen.remote_hive import RemoteHive
from tests.queen.test_remote_hive import hosted, report

GiB = 2**30


@dataclass
class FakeHive:
    """What device_views reads of a hive: its alias, devices and memory budget."""

    alias: str
    gpus: list[float] = field(default_factory=list)  # GiB each
    cpu: float = 4.0

    def devices(self) -> list[DeviceInfo]:
        gpus = [DeviceInfo(id=f"cuda{i}", name="GPU", backend="cuda", total_bytes=int(g * GiB))
                for i, g in enumerate(self.gpus)]
        return [*gpus, DeviceInfo(id="cpu", name="CPU", backend="cpu", total_bytes=int(self.cpu * GiB))]

    def memory_total(self) -> int:
        return int(self.cpu * GiB)

    def lent(self) -> dict[str, int]:
        return {}


def views(*hives: FakeHive, need: float = 1.0) -> list[DeviceView]:
    return [v for h in hives for v in device_views(h, [], int(need * GiB), 0)]


def worker(wid: str, hive: str, memory: float, in_flight: int = 0, device: str = "cpu",
           last_used: float = 0.0) -> WorkerView:
    return WorkerView(wid, hive, device, int(memory * GiB), in_flight, last_used)


def room(need: float, devices: list[DeviceView], workers: list[WorkerView], **kw: object) -> decide.Room:
    return decide.Room("m", int(need * GiB), devices, workers, **kw)  # type: ignore[arg-type]


# -- the decision -----------------------------------------------------------------------------------------------
def test_a_model_that_fits_is_loaded_on_a_gpu_before_the_cpu() -> None:
    assert decide.load(room(2, views(FakeHive("a", gpus=[8])), [])) == decide.Load("a", "cuda0")


def test_the_least_recently_used_idle_worker_is_evicted_and_only_it() -> None:
    workers = [worker("old", "a", 1.5, last_used=1), worker("new", "a", 1.5, last_used=5)]
    assert decide.load(room(2, views(FakeHive("a", cpu=4)), workers)) == decide.Load("a", "cpu", ("old",))


def test_a_worker_with_requests_in_flight_is_never_evicted_the_request_waits() -> None:
    workers = [worker("busy", "a", 3, in_flight=1)]
    assert isinstance(decide.load(room(2, views(FakeHive("a", cpu=4)), workers)), decide.Wait)


def test_a_model_no_device_can_hold_is_refused_with_the_numbers() -> None:
    refused = decide.load(room(6, views(FakeHive("a", cpu=4)), []))
    assert isinstance(refused, decide.Refuse) and isinstance(refused.error, ModelTooLargeError)
    assert "needs 6.00 GiB but the largest device has 4.00 GiB" in refused.error.message


def test_a_larger_context_that_does_not_fit_names_the_tokens_and_the_setting() -> None:
    refused = decide.load(room(6, views(FakeHive("a", cpu=4)), [], context=8192))
    assert isinstance(refused, decide.Refuse) and refused.error.code == "context_length_exceeded"
    assert "at least 8192 tokens per slot" in refused.error.message and "RBEE_WORKER_SLOTS" in refused.error.message


def test_a_model_pinned_to_a_device_goes_there_or_is_refused_naming_the_devices() -> None:
    devices = views(FakeHive("a", gpus=[8, 8]))
    assert decide.load(room(2, devices, [], pinned_device="CUDA1")) == decide.Load("a", "cuda1")
    refused = decide.load(room(2, devices, [], pinned_device="cuda7"))
    assert isinstance(refused, decide.Refuse) and isinstance(refused.error, WorkerUnavailable)
    assert "'cuda7'" in refused.error.message and "a:cuda0" in refused.error.message


def test_workers_min_replicas_keeps_are_never_evicted() -> None:
    workers = [worker("kept", "a", 3)]
    assert isinstance(decide.load(room(2, views(FakeHive("a", cpu=4)), workers, hard=frozenset({"kept"}))),
                      decide.Wait)


def test_a_model_whose_workers_keep_failing_waits_out_an_exponential_back_off() -> None:
    assert decide.backoff("m", 1, 100.0, "boom", now=100.0) is None  # one failure: try again at once
    waited = decide.backoff("m", 4, 100.0, "boom", now=101.0)  # 4 in a row: 4 s, 1 s gone
    assert isinstance(waited, decide.Refuse) and waited.error.headers == {"Retry-After": "3"}
    assert "failed 4 times in a row" in waited.error.message and "boom" in waited.error.message
    assert decide.backoff("m", 4, 100.0, "boom", now=104.5) is None
    capped = decide.backoff("m", 30, 100.0, "boom", now=100.0)
    assert capped is not None and capped.error.headers == {"Retry-After": "60"}


def test_a_replica_starts_only_into_free_memory_up_to_max_replicas() -> None:
    assert decide.may_load(ready=1, loading=False, replicas=2)
    assert not decide.may_load(ready=1, loading=False, replicas=1)
    assert not decide.may_load(ready=0, loading=True, replicas=2)
    idle_other = [worker("other", "a", 3)]
    devices = views(FakeHive("a", cpu=4))
    assert isinstance(decide.load(room(2, devices, idle_other, evict=False)), decide.Wait)
    assert decide.load(room(2, devices, idle_other)) == decide.Load("a", "cpu", ("other",))


def test_the_least_busy_ready_worker_serves_in_turn_only() -> None:
    ready = [decide.Ready("full", 2, 2, 1.0), decide.Ready("busy", 1, 2, 2.0), decide.Ready("idle", 0, 2, 3.0)]
    assert decide.serve(ready, ordered=False, turn=True) == decide.Serve("idle")
    assert decide.serve(ready, ordered=True, turn=True) == decide.Serve("busy")  # the policy's order
    assert decide.serve(ready, ordered=False, turn=False) is None  # others wait before it
    assert decide.serve(ready[:1], ordered=False, turn=True) is None


def test_workers_of_a_model_with_waiters_are_left_alone_until_the_grouping_cap() -> None:
    a_worker = [worker("a1", "h", 3)]
    devices = views(FakeHive("h", cpu=4))
    assert decide.grouping(waited_since=0.0, now=10.0)
    assert isinstance(decide.load(room(2, devices, a_worker, soon=frozenset({"a1"}))), decide.Wait)
    assert not decide.grouping(waited_since=0.0, now=decide.GROUPING_CAP_S)  # B waited long enough: A goes
    assert decide.load(room(2, devices, a_worker)) == decide.Load("h", "cpu", ("a1",))


def test_a_model_whose_holders_are_busy_is_copied_to_a_hive_with_room() -> None:
    busy = [worker("a1", "a", 3, in_flight=1)]
    elsewhere = decide.Elsewhere(views(FakeHive("b", cpu=8)), [])
    copied = decide.load(room(2, views(FakeHive("a", cpu=4)), busy, elsewhere=elsewhere))
    assert isinstance(copied, decide.CopyThenLoad) and (copied.hive, copied.device) == ("b", "cpu")


def test_the_policy_ranks_the_devices_and_leaving_out_all_means_the_built_in_choice() -> None:
    devices = views(FakeHive("a", gpus=[8, 8]))
    last_first = decide.load(room(2, devices, [], rank=lambda ds: [d for d in ds if d.device == "cuda1"]))
    assert last_first == decide.Load("a", "cuda1")
    assert decide.load(room(2, devices, [], rank=lambda ds: [])) == decide.Load("a", "cuda0")


# -- the admission queue ----------------------------------------------------------------------------------------
@dataclass
class FakeLease:
    worker: str
    released: bool = False

    def release(self) -> None:
        self.released = True


class Slots:
    """Free slots per model, handed out as leases to whoever `grant` lets through."""

    def __init__(self) -> None:
        self.free: dict[str, int] = {}

    def count(self, key: object) -> int:
        assert isinstance(key, str)
        return self.free.get(key, 0)

    def grant(self, model: str, allowed: bool = True) -> FakeLease | None:
        if not allowed or not self.free.get(model):
            return None
        self.free[model] -= 1
        return FakeLease(model)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def queue(slots: Slots, per_model: int = 8, overall: int = 16) -> Admission[FakeLease]:
    return Admission(lambda: (per_model, overall, 300.0), slots.count)


async def test_a_freed_slot_is_handed_to_the_first_in_line_and_a_b_a_b_is_served_a_a_b_b() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    order = ["A", "B", "A", "B"]
    waiters = [admission.join(m, m, lambda m=m: slots.grant(m), clock()) for m in order]  # type: ignore[misc]
    waits = [asyncio.ensure_future(admission.wait(w, clock() + 60, None, None, clock)) for w in waiters]
    await asyncio.sleep(0)
    served: list[str] = []
    for model in ("A", "A", "B", "B"):  # A's worker frees twice, then B's does
        slots.free[model] = 1
        assert admission.offer(model) == 1
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            waits.remove(task)
            lease = task.result()
            assert lease is not None
            served.append(lease.worker)
    assert served == ["A", "A", "B", "B"]
    assert [w.woken.result().worker for w in waiters] == order  # each in its own line's order


async def test_a_slot_a_waiter_may_not_use_goes_to_the_next_in_line() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    pinned = admission.join("A", "A", lambda: slots.grant("A", allowed=False), clock())
    free = admission.join("A", "A", lambda: slots.grant("A"), clock())
    slots.free["A"] = 1
    assert admission.offer("A") == 1
    assert free.woken.done() and not pinned.woken.done()
    assert admission.first(pinned) and admission.waiting() == {"A": 1}


async def test_only_the_front_of_each_line_looks_again_after_a_change() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    front = admission.join("B", "B", lambda: slots.grant("B"), clock())
    behind = admission.join("B", "B", lambda: slots.grant("B"), clock())
    admission.look_again()
    assert front.woken.result() is None and not behind.woken.done()


async def test_a_failed_load_fails_its_waiters_with_the_error() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    waiter = admission.join("A", "A", lambda: slots.grant("A"), clock())
    admission.fail("A", WorkerUnavailable("could not start"))
    with pytest.raises(WorkerUnavailable, match="could not start"):
        await admission.wait(waiter, clock() + 60, None, None, clock)


async def test_the_queue_is_bounded_per_model_and_in_all_with_retry_after() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots, per_model=2, overall=3)
    for model in ("A", "A", "B"):
        admission.join(model, model, lambda: None, clock())
    with pytest.raises(QueueFull) as per_model:
        admission.join("A", "A", lambda: None, clock())
    assert per_model.value.status == 503 and per_model.value.headers == {"Retry-After": "2"}
    with pytest.raises(QueueFull):
        admission.join("C", "C", lambda: None, clock())  # 3 in all


async def test_a_wait_past_the_queue_timeout_is_a_503() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    waiter = admission.join("A", "A", lambda: None, clock())
    clock.t += 301
    with pytest.raises(QueueFull, match="Waited 300 s") as full:
        await admission.wait(waiter, clock() - 1, None, None, clock)
    assert full.value.headers == {"Retry-After": "5"}


async def test_the_clients_deadline_ends_its_wait() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    waiter = admission.join("A", "A", lambda: None, clock())
    with pytest.raises(DeadlineExceeded):
        await admission.wait(waiter, clock() + 60, clock(), None, clock)


async def test_a_client_that_leaves_is_taken_out_of_line_and_a_late_lease_is_released() -> None:
    slots, clock = Slots(), Clock()
    admission = queue(slots)
    waiter = admission.join("A", "A", lambda: slots.grant("A"), clock())
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gone.set_result(None)
    with pytest.raises(ClientGone):
        await admission.wait(waiter, clock() + 60, None, gone, clock)
    admission.leave(waiter)
    assert admission.waiting() == {} and not admission.busy("A")
    late = admission.join("A", "A", lambda: slots.grant("A"), clock())
    slots.free["A"] = 1
    admission.offer("A")  # handed a lease, but its request is cancelled before it takes it
    admission.leave(late)
    assert late.woken.result() is not None and late.woken.result().released  # type: ignore[union-attr]


# -- the queen's counters per worker ----------------------------------------------------------------------------
async def test_the_queen_keeps_each_workers_counters_and_adopted_workers_get_the_default_keep_alive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    monkeypatch.setenv("RBEE_KEEP_ALIVE", "90s")
    hive = RemoteHive(report(hosted("h1-w1")), "token")  # a heartbeat reports a worker the queen did not start
    adopted = hive.supervisor.get("h1-w1")
    assert adopted is not None
    loads = Loads()
    assert loads.shown(adopted).in_flight == 0 and loads.shown(adopted).idle_unload_in_s is None
    executor = Executor({"h1": hive}, loads, lambda: None, lambda key, error: None)
    await executor.unload_expired()  # the reaper's pass: adopted, so unloaded when idle too
    left = loads.shown(adopted).idle_unload_in_s
    assert left is not None and 85 < left <= 90
    loads.of(adopted).in_flight += 1  # what a lease does
    assert loads.shown(adopted).in_flight == 1 and adopted.info().in_flight == 0  # the hive's view has no counters
    hive.heard_from(report(), "token")  # the hive no longer lists it
    await executor.unload_expired()
    assert loads.peek(adopted).in_flight == 0  # its counters were dropped with it


async def test_a_model_no_hive_holds_goes_to_the_spread_hook_unless_spreads_are_forbidden(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from rbee.contracts.models import ModelEntry
    from rbee.contracts.workers import WorkerMode
    from rbee.queen import views as views_mod
    from rbee.queen.scheduler import Scheduler

    scheduler = Scheduler({})
    asked: list[str] = []

    async def spread(name: str, refused: object) -> object:
        asked.append(name)
        raise ModelTooLargeError(f"{refused}; nor a spread")

    scheduler.spread = spread  # type: ignore[assignment]
    entry = ModelEntry(name="m", path="/m.gguf", size_bytes=1, added_at=0.0)
    load = views_mod.Load(scheduler.loads, [(FakeHive("a"), entry)], {"a": GiB}, [], None)  # type: ignore[list-item]
    refusal = decide.Refuse(ModelTooLargeError("m needs 6.00 GiB"))
    monkeypatch.setenv("RBEE_SPREAD", "0")
    with pytest.raises(ModelTooLargeError):
        scheduler._carry_out(refusal, load, WorkerMode.GENERATE, None)
    assert not asked and not scheduler.executor.loading
    monkeypatch.delenv("RBEE_SPREAD")
    scheduler._carry_out(refusal, load, WorkerMode.GENERATE, None)  # a load in flight: its waiters wait for it
    task = scheduler.executor.loading[("m", WorkerMode.GENERATE)]
    with pytest.raises(ModelTooLargeError):
        await task
    assert asked == ["m"]
    with pytest.raises(ModelTooLargeError):  # embeddings are never spread
        scheduler._carry_out(refusal, load, WorkerMode.EMBED, None)
