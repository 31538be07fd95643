from __future__ import annotations

import pytest
from pydantic import ValidationError

import rbee.contracts as contracts
from rbee.contracts import InvalidTransition, WorkerState, check_transition
from rbee.contracts.workers import WORKER_TRANSITIONS, WorkerInfo, memory_held

S = WorkerState


@pytest.mark.parametrize(
    ("current", "new"),
    [(S.PENDING, S.STARTING), (S.STARTING, S.READY), (S.READY, S.DRAINING), (S.DRAINING, S.STOPPED),
     (S.STARTING, S.ERROR), (S.READY, S.UNREACHABLE), (S.UNREACHABLE, S.READY), (S.PENDING, S.STOPPED)],
)
def test_allowed_transitions(current: WorkerState, new: WorkerState) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [(S.STOPPED, S.READY), (S.ERROR, S.STARTING), (S.PENDING, S.READY), (S.READY, S.STARTING),
     (S.DRAINING, S.READY)],
)
def test_forbidden_transitions(current: WorkerState, new: WorkerState) -> None:
    with pytest.raises(InvalidTransition, match=f"from {current} to {new}"):
        check_transition(current, new)


def test_every_state_has_a_row_and_terminal_states_lead_nowhere() -> None:
    assert set(WORKER_TRANSITIONS) == set(WorkerState)
    assert WORKER_TRANSITIONS[S.STOPPED] == WORKER_TRANSITIONS[S.ERROR] == frozenset()


def test_public_surface_is_pinned() -> None:
    assert sorted(contracts.__all__) == sorted(
        ["WORKER_TRANSITIONS", "ChatCompletionRequest", "ChatMessage", "CompletionRequest", "EmbeddingRequest",
         "EngineInfo", "ErrorBody", "ErrorEnvelope", "HiveInfo", "InvalidTransition", "JobCreate", "JobCreated",
         "JobEvent", "JobEventType", "JobInfo", "JobKind", "MemoryNeed", "ModelDetail", "ModelEntry",
         "ModelList", "ModelObject",
         "ModelRequest", "QueenHealth", "StatusReport", "StreamOptions", "WorkerInfo", "WorkerMode",
         "WorkerState", "check_transition"]
    )
    for name in contracts.__all__:
        assert hasattr(contracts, name)


def test_a_worker_holds_its_memory_on_its_device_or_spread_by_size() -> None:
    assert memory_held("cuda0", 1000) == {"cuda0": 1000}
    assert memory_held("cuda0+cuda1", 1000, [24, 8]) == {"cuda0": 750, "cuda1": 250}
    assert memory_held("cuda0+cuda1+cuda2", 1000) == {"cuda0": 334, "cuda1": 333, "cuda2": 333}  # sizes unknown
    info = WorkerInfo(id="w", model="m", hive="h", state=WorkerState.READY, slots=1, context_size=1, started_at=0,
                      memory_bytes=1000, device="cuda0+cuda1")
    assert info.device_memory == {"cuda0": 500, "cuda1": 500}  # filled in when the sender did not say


def test_there_is_no_downloading_worker() -> None:
    """A worker exists once its model is on its hive (the pull or copy is a job): a report of one is refused."""
    assert "downloading" not in {s.value for s in WorkerState}
    with pytest.raises(ValidationError, match="state"):
        WorkerInfo(id="w", model="m", hive="h", state="downloading", slots=1, context_size=1,  # type: ignore[arg-type]
                   started_at=0)


def test_an_offloaded_worker_holds_its_planned_shares_and_a_hive_cannot_send_a_huge_label() -> None:
    assert memory_held("cuda0+cpu", 1000, [389, 611]) == {"cuda0": 389, "cpu": 611}  # the plan's bytes as weights
    info = WorkerInfo(id="w", model="m", hive="h", state=WorkerState.READY, slots=1, context_size=1, started_at=0,
                      device="cuda0+cpu", offload="cuda0 1/3 layers + cpu 2/3")
    assert info.offload == "cuda0 1/3 layers + cpu 2/3"
    with pytest.raises(ValidationError, match="offload"):  # a hostile hive's report is bounded
        WorkerInfo(id="w", model="m", hive="h", state=WorkerState.READY, slots=1, context_size=1, started_at=0,
                   offload="x" * 201)


@pytest.mark.parametrize("mib", [-1, 2**20 + 1, "lots"])
def test_a_hive_cannot_report_a_prompt_cache_out_of_bounds(mib: object) -> None:
    """A hostile hive's report of a worker's host-memory prompt cache (what makes affinity remember the
    conversations it keeps) is a bounded whole number of MiB."""
    assert WorkerInfo(id="w", model="m", hive="h", state=WorkerState.READY, slots=1, context_size=1, started_at=0,
                      cache_ram_mib=64).cache_ram_mib == 64
    with pytest.raises(ValidationError, match="cache_ram_mib"):
        WorkerInfo(id="w", model="m", hive="h", state=WorkerState.READY, slots=1, context_size=1, started_at=0,
                   cache_ram_mib=mib)  # type: ignore[arg-type]
