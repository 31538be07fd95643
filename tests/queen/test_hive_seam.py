"""Both kinds of hive satisfy the one seam (rbee/queen/hive_seam.py) for real: every member there, with the
protocol's parameters, async where it is, and answering on both sides (mypy checks the same statically in
`hive_seam._both_kinds_conform`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from rbee.contracts.hives import HiveState
from rbee.contracts.jobs import JobCreate, JobKind
from rbee.contracts.models import ModelEntry
from rbee.hive.service import Hive
from rbee.queen import admin_routes
from rbee.queen.errors import InvalidRequest
from rbee.queen.hive_seam import HiveSeam
from rbee.queen.remote_hive import RemoteHive
from rbee.queen.scheduler import Scheduler
from tests.fixtures.tiny_gguf import write_tiny_model
from tests.queen.test_remote_hive import hosted, report

HUB_ENTRY = ModelEntry(name="org/m-GGUF:Q4_K_M", path="/h/m.gguf", size_bytes=1, source="hf", added_at=0.0)
_MEMBERS = [n for n in dir(HiveSeam) if not n.startswith("_")]


@pytest.fixture
async def kinds(tmp_path: Path) -> list[HiveSeam]:
    local = Hive("localhost", state=tmp_path / "state")
    remote = RemoteHive(report(hosted("h1-w1")).model_copy(update={"models": [HUB_ENTRY]}), "token")
    yield [local, remote]
    await remote.close()


def test_the_seam_is_what_callers_use() -> None:
    assert {"state", "catalog", "supervisor", "resolve", "holds", "need", "spawn_worker", "status", "remove",
            "pull", "copy_in", "open_share"} <= set(_MEMBERS)
    assert "install_engine" not in _MEMBERS  # the local engine only: the admin route asks for that kind


async def test_both_kinds_have_every_member_with_the_protocols_parameters(kinds: list[HiveSeam]) -> None:
    for hive in kinds:
        assert isinstance(hive, HiveSeam)
        for name in _MEMBERS:
            wanted = inspect.getattr_static(HiveSeam, name)
            if isinstance(wanted, property):
                assert not callable(getattr(hive, name)), f"{type(hive).__name__}.{name} is a method"
                continue
            given = getattr(type(hive), name)
            assert inspect.iscoroutinefunction(given) == inspect.iscoroutinefunction(wanted), name
            params = list(inspect.signature(wanted).parameters.values())
            actual = inspect.signature(given).parameters
            for param in params:
                assert param.name in actual, f"{type(hive).__name__}.{name} lacks {param.name}"
                assert actual[param.name].default == param.default, f"{type(hive).__name__}.{name}({param.name})"


async def test_a_local_hive_is_always_ready_and_a_remote_one_while_it_reports(kinds: list[HiveSeam]) -> None:
    local, remote = kinds
    assert local.state is HiveState.READY and local.status().state is HiveState.READY
    assert remote.state is HiveState.READY
    assert isinstance(remote, RemoteHive)
    remote.last_seen -= 100
    remote.check_alive(timeout_s=5)
    assert remote.state is HiveState.UNREACHABLE and remote.status().last_seen_s == pytest.approx(100, abs=5)
    assert remote.status().workers == 0 and local.status().workers == 0  # ready workers only


async def test_holds_names_what_a_catalog_has_and_adds_nothing(kinds: list[HiveSeam], tmp_path: Path) -> None:
    local, remote = kinds
    assert await remote.holds("org/m-GGUF") == HUB_ENTRY  # by the hub name it was pulled as
    assert await remote.holds("org/other-GGUF") is None
    model = write_tiny_model(tmp_path / "tiny.gguf")
    assert await local.holds(str(model)) is None  # a path it does not hold is not added
    assert await local.catalog.entries() == []
    assert isinstance(local, Hive)
    added = await local.catalog.add_file(model, "tiny")
    assert await local.holds("tiny") == added and await local.holds(str(model)) == added


async def test_the_engine_of_a_remote_hive_is_refused_before_any_job_starts() -> None:
    remote = RemoteHive(report(), "token")
    state = SimpleNamespace(scheduler=Scheduler({"h1": remote}))
    with pytest.raises(InvalidRequest, match=r"remote hive 'h1' is installed on its machine, by `rbee hive install"):
        admin_routes._job_body(state, JobCreate(kind=JobKind.ENGINE_INSTALL, hive="h1"))  # type: ignore[arg-type]
    await remote.close()
