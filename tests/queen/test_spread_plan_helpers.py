"""rbee/queen/spread_plan.py with helpers that lend several devices: the seed's "server with two 3090s" lends
both (and its RAM) through one rpc-server, in llama-server's device order; a busy or too small device is
left out of an automatic plan and refused, by name, in a forced one."""

from __future__ import annotations

import pytest

from rbee.contracts.spread_plans import parse_spread
from rbee.hive.estimate import OVERHEAD
from rbee.queen.placement import DeviceView
from rbee.queen.spread_plan import SpreadRefused, forced, plan
from tests.queen.test_spread_plan import GiB, _hive, _link, _links


def _fleet(**server: float) -> dict[str, list[DeviceView]]:
    """A gaming PC (one 24 GiB GPU, 64 GiB of RAM for workers) and a server (two 24 GiB GPUs, 4 GiB of RAM)."""
    return {"pc": _hive("pc", cuda0=24, cpu=64), "server": _hive("server", **(server or
                                                                             {"cuda0": 24, "cuda1": 24, "cpu": 4}))}


LINKS = _links(_link("pc", "server"))


def test_a_helper_with_two_gpus_lends_both_in_llama_servers_order() -> None:
    done = plan("m", 100 * GiB, _fleet(), LINKS)
    assert done.spread, done.reason
    assert done.main == "pc" and done.helpers == ["server"]
    # the rpc-server's devices first (RPC0, RPC1, RPC2: its -d order), then the main hive's GPU; its CPU outside
    assert [(d.hive, d.device, d.rpc, d.order) for d in done.devices] == [
        ("server", "cuda0", True, 0), ("server", "cuda1", True, 1), ("server", "cpu", True, 2),
        ("pc", "cuda0", False, 3), ("pc", "cpu", False, None)]
    rooms = {(d.hive, d.device): d.room for d in done.devices}
    assert rooms[("server", "cuda0")] == rooms[("server", "cuda1")] == 24 * GiB - OVERHEAD
    total = sum(rooms.values())
    for d in done.devices:  # each device's share follows its room
        assert d.share == pytest.approx(d.room / total, abs=1e-3)
    assert done.tensor_split == [d.share for d in done.devices if d.order is not None]
    assert sum(done.tensor_split) + done.main_cpu_share == pytest.approx(1.0, abs=1e-3)


def test_a_busy_gpu_of_a_helper_is_left_out_and_its_other_gpu_lent() -> None:
    """Its own worker holds all of cuda0 (room 0); a device with no more than a runtime's room holds nothing."""
    done = plan("m", 95 * GiB, _fleet(cuda0=0, cuda1=24, cpu=0.2), LINKS)
    assert done.spread, done.reason
    assert [(d.hive, d.device) for d in done.devices if d.hive == "server"] == [("server", "cuda1")]
    assert all(d.share > 0 for d in done.devices)


def test_a_helper_whose_every_device_is_busy_is_no_helper() -> None:
    hives = {**_fleet(), "busy": _hive("busy", cuda0=0.2, cpu=0.1)}
    links = _links(_link("pc", "server", rtt=1.0), _link("pc", "busy", rtt=0.1))  # the best link, no room
    done = plan("m", 100 * GiB, hives, links)
    assert done.spread and done.helpers == ["server"], done.reason
    assert "busy" not in {d.hive for d in done.devices}


def test_a_fleet_short_of_room_once_a_helpers_gpu_is_busy_is_refused_with_the_numbers() -> None:
    done = plan("m", 120 * GiB, _fleet(cuda0=0, cuda1=24, cpu=4), LINKS)
    assert not done.spread and "needs 120.00 GiB" in done.reason and "do not hold it together" in done.reason


def test_a_forced_spread_over_a_helpers_two_gpus() -> None:
    done = forced("m", 2 * GiB, parse_spread("pc:cpu+server:cuda0+server:cuda1"), _fleet(), LINKS)
    assert done.spread and done.main == "pc" and done.helpers == ["server"]
    assert [(d.hive, d.device, d.order) for d in done.devices] == [
        ("server", "cuda0", 0), ("server", "cuda1", 1), ("pc", "cpu", None)]
    assert len(done.tensor_split) == 2 and done.main_cpu_share > 0
    assert "forced spread over pc:cpu+server:cuda0+server:cuda1" in done.reason


@pytest.mark.parametrize(("server", "text", "message"), [
    ({"cuda0": 0, "cuda1": 24, "cpu": 4}, "pc:cpu+server:cuda0+server:cuda1",
     "server:cuda0: device 'cuda0' of hive 'server' has no room: its workers (or other spreads) hold all"),
    ({"cuda0": 24, "cuda1": 0.2, "cpu": 4}, "pc:cpu+server:cuda0+server:cuda1",
     "server:cuda1: device 'cuda1' of hive 'server' has 0.20 GiB free, not more than the 0.25 GiB of the runtime"),
    ({"cuda0": 24, "cuda1": 24, "cpu": 4}, "pc:cpu+server:cuda0+server:cuda2",
     "server:cuda2: hive 'server' has no device 'cuda2' (it has: cuda0, cuda1, cpu)"),
])
def test_a_forced_helper_device_that_is_busy_too_small_or_not_there_is_refused_by_name(
        server: dict[str, float], text: str, message: str) -> None:
    with pytest.raises(SpreadRefused) as refused:
        forced("m", 2 * GiB, parse_spread(text), _fleet(**server), LINKS)
    assert message in str(refused.value)
