"""The effect around the pull choice: the hub says how big the files are, each hive how it stands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rbee.common.jobs import JobFailed
from rbee.contracts.hives import DeviceInfo, HiveReport, HiveState
from rbee.contracts.jobs import JobEventType
from rbee.contracts.models import ModelEntry
from rbee.contracts.status import EngineInfo
from rbee.hive.downloads import Hub
from rbee.queen.pull_targets import place_pull
from rbee.queen.remote_hive import RemoteHive
from tests.fixtures.fake_hub import FakeHub

GiB = 2**30
MODEL = "org/m-GGUF:Q4_K_M"
PAYLOAD = b"GGUF" + b"\0" * (3 * 2**20 - 4)


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub().start() as hub:
        hub.add_repo("org/m-GGUF", {"m-Q4_K_M.gguf": PAYLOAD, "m-Q8_0.gguf": PAYLOAD + PAYLOAD})
        yield hub


def remote(alias: str, devices: list[DeviceInfo], free_disk: int | None = 100 * GiB, **update: Any) -> RemoteHive:
    cpu = DeviceInfo(id="cpu", name="CPU", total_bytes=32 * GiB, free_bytes=30 * GiB)
    report = HiveReport(alias=alias, version="0.1.0", address="10.0.0.5", port=7835, engine=EngineInfo(path="/e"),
                        devices=[*devices, cpu], memory_total=32 * GiB, models_free_bytes=free_disk)
    return RemoteHive(report.model_copy(update=update), "t")


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any] | None]] = []

    def __call__(self, type: JobEventType = JobEventType.PROGRESS, message: str = "", **kw: Any) -> None:
        self.seen.append((message, kw.get("data")))


GPU = DeviceInfo(id="cuda0", name="RTX 4090", backend="cuda", engine_name="CUDA0", total_bytes=24 * GiB,
                 free_bytes=22 * GiB)


async def test_a_pull_goes_to_the_gpu_hive_and_says_why(hub: FakeHub) -> None:
    hives = {"mac": remote("mac", []), "gaming-pc": remote("gaming-pc", [GPU])}
    emit = Events()
    chosen = await place_pull(hives, MODEL, emit, Hub(endpoint=hub.url))
    assert chosen is not None and chosen[0] is hives["gaming-pc"]
    message, data = emit.seen[-1]
    assert message.startswith("placing on gaming-pc: its cuda0 has 22.0 GiB for the ~") and "3 MiB model" in message
    assert "mac has no GPU that holds it" in message
    assert data == {"hive": "gaming-pc", "placement": message}
    for hive in hives.values():
        await hive.close()


async def test_the_quantization_asked_is_what_is_measured_and_a_small_disk_is_passed(hub: FakeHub) -> None:
    hives = {"gpu": remote("gpu", [GPU], free_disk=4 * 2**20), "cpu": remote("cpu", [])}
    emit = Events()
    chosen = await place_pull(hives, "org/m-GGUF:Q8_0", emit, Hub(endpoint=hub.url))  # 6 MiB of files
    assert chosen is not None and chosen[0] is hives["cpu"]
    assert "gpu has 4 MiB free for models, the files need 6 MiB" in emit.seen[-1][0]
    for hive in hives.values():
        await hive.close()


async def test_a_hive_that_holds_it_is_chosen_and_an_unreachable_one_is_not(hub: FakeHub) -> None:
    entry = ModelEntry(name=MODEL, path="/h/m.gguf", size_bytes=len(PAYLOAD), source="hf", added_at=0.0)
    away = remote("away", [GPU])
    away.state = HiveState.UNREACHABLE
    hives = {"away": away, "cpu": remote("cpu", [], models=[entry]), "gpu": remote("gpu", [GPU])}
    emit = Events()
    chosen = await place_pull(hives, MODEL, emit, Hub(endpoint=hub.url))
    assert chosen is not None and chosen[0] is hives["cpu"]
    assert emit.seen[-1][0].startswith("placing on cpu: it already holds the model; gpu does not hold it yet; "
                                       "away is unreachable: no heartbeat for")
    for hive in hives.values():
        await hive.close()


async def test_no_hive_can_take_it_fails_with_each_hives_reason(hub: FakeHub) -> None:
    hives = {"h1": remote("h1", [], free_disk=2**20), "h2": remote("h2", [], free_disk=0)}
    with pytest.raises(JobFailed) as failed:
        await place_pull(hives, MODEL, Events(), Hub(endpoint=hub.url))
    message = str(failed.value)
    assert message.startswith("no hive can take the model (files 3 MiB")
    assert "h1 has 1 MiB free for models" in message and "h2 has 0 bytes free for models" in message
    for hive in hives.values():
        await hive.close()


async def test_nothing_is_placed_for_a_catalog_name_or_with_one_hive_and_a_hub_error_fails(hub: FakeHub) -> None:
    one, two = {"h1": remote("h1", [])}, {"h1": remote("h1", []), "h2": remote("h2", [])}
    assert await place_pull(two, "my-model", Events(), Hub(endpoint=hub.url)) is None
    assert await place_pull(one, MODEL, Events(), Hub(endpoint=hub.url)) is None  # its own checks speak
    with pytest.raises(JobFailed, match="no Q2_K GGUF"):
        await place_pull(two, "org/m-GGUF:Q2_K", Events(), Hub(endpoint=hub.url))
    for hive in [*one.values(), *two.values()]:
        await hive.close()
