from __future__ import annotations

import pytest

from rbee.contracts.spread_plans import BadSpread, LinkMeasured, parse_spread
from rbee.hive.estimate import OVERHEAD
from rbee.queen.placement import DeviceView, Part
from rbee.queen.spread_plan import Bounds, SpreadRefused, forced, link_between, plan

GiB = 2**30


def _hive(alias: str, **devices: float) -> list[DeviceView]:
    return [DeviceView(alias, name, int(size * GiB)) for name, size in devices.items()]


def _link(a: str, b: str, rtt: float = 0.3, mbps: float = 110.0, at: float = 1.0) -> LinkMeasured:
    return LinkMeasured(source=a, peer=b, rtt_ms_median=rtt, rtt_ms_p90=rtt * 2, mbps=mbps, rounds=10,
                        bulk_bytes=1 << 20, measured_at=at)


def _links(*measures: LinkMeasured) -> dict[tuple[str, str], LinkMeasured]:
    return {(m.source, m.peer): m for m in measures}


def test_a_model_that_fits_one_hive_is_never_spread() -> None:
    hives = {"a": _hive("a", cuda0=24, cpu=32), "b": _hive("b", cuda0=10)}
    done = plan("m", 40 * GiB, hives, _links(_link("a", "b")))
    assert not done.spread and done.main == "a" and not done.devices
    assert "fits hive a" in done.reason and "not spread" in done.reason


def test_two_hives_needed_main_has_most_room_and_shares_follow_free_memory() -> None:
    hives = {"small": _hive("small", cpu=10), "big": _hive("big", cuda0=24, cpu=6), "far": _hive("far", cpu=30)}
    links = _links(_link("far", "small", rtt=0.4), _link("big", "far", rtt=0.3))
    done = plan("m", 36 * GiB, hives, links, Bounds(max_rtt_ms=5, min_mbps=100))
    assert done.spread, done.reason
    # "far" has the most room (30 GiB); "big" 30 GiB less one runtime for its second device
    assert done.main == "far" and done.helpers == ["big"]
    shares = {(d.hive, d.device): d.share for d in done.devices}
    assert shares[("far", "cpu")] > shares[("big", "cuda0")] > shares[("big", "cpu")]
    assert shares[("big", "cuda0")] == pytest.approx((24 * GiB - OVERHEAD) / (60 * GiB - 2 * OVERHEAD), abs=1e-3)


def test_helpers_ordered_by_link_and_shares_in_device_order() -> None:
    hives = {"main": _hive("main", cuda0=20, cpu=8), "near": _hive("near", cuda0=12),
             "mid": _hive("mid", cpu=16)}
    links = _links(_link("main", "near", rtt=0.2), _link("mid", "main", rtt=1.5))
    done = plan("m", 50 * GiB, hives, links)
    assert done.spread, done.reason
    assert done.main == "main" and done.helpers == ["near", "mid"]
    # llama-server's order: RPC devices first (in --rpc order), then the main hive's GPUs; its CPU outside
    order = [(d.hive, d.device, d.order) for d in done.devices]
    assert order == [("near", "cuda0", 0), ("mid", "cpu", 1), ("main", "cuda0", 2), ("main", "cpu", None)]
    rooms = {(d.hive, d.device): d.room for d in done.devices}
    assert rooms[("main", "cuda0")] == 20 * GiB  # the first device holds the runtime the need counts
    assert rooms[("near", "cuda0")] == 12 * GiB - OVERHEAD
    total = sum(rooms.values())
    for d in done.devices:
        assert d.share == pytest.approx(d.room / total, abs=1e-3)
    assert done.tensor_split == [d.share for d in done.devices if d.order is not None]
    assert done.main_cpu_share == pytest.approx(rooms[("main", "cpu")] / total, abs=1e-3)
    assert sum(done.tensor_split) + done.main_cpu_share == pytest.approx(1.0, abs=1e-3)


def test_only_as_many_helpers_as_needed() -> None:
    hives = {"main": _hive("main", cpu=20), "near": _hive("near", cpu=12), "mid": _hive("mid", cpu=16)}
    links = _links(_link("main", "near", rtt=0.2), _link("main", "mid", rtt=1.0))
    done = plan("m", 25 * GiB, hives, links)
    assert done.helpers == ["near"] and {d.hive for d in done.devices} == {"main", "near"}


def test_links_over_the_bound_are_refused_with_reasons() -> None:
    hives = {"a": _hive("a", cpu=20), "slow": _hive("slow", cpu=20), "laggy": _hive("laggy", cpu=20),
             "unknown": _hive("unknown", cpu=20)}
    links = _links(_link("a", "slow", rtt=0.5, mbps=12.0), _link("laggy", "a", rtt=40.0))
    done = plan("m", 30 * GiB, hives, links, Bounds(max_rtt_ms=5, min_mbps=100))
    assert not done.spread
    why = {r.hive: r.reason for r in done.refused}
    assert "12.0 MB/s is under RBEE_SPREAD_MIN_MBPS=100" in why["slow"]
    assert "round trip 40.00 ms median is over RBEE_SPREAD_MAX_RTT_MS=5" in why["laggy"]
    assert "not measured" in why["unknown"]
    assert "needs 30.00 GiB" in done.reason and "a 20.00 GiB" in done.reason and "refused:" in done.reason


def test_too_large_for_the_fleet_says_the_numbers() -> None:
    hives = {"a": _hive("a", cpu=8), "b": _hive("b", cpu=8)}
    done = plan("m", 100 * GiB, hives, _links(_link("a", "b")))
    assert not done.spread and "needs 100.00 GiB" in done.reason and "b 8.00 GiB" in done.reason


def test_spread_views_of_one_hive_are_not_counted_twice() -> None:
    spread = DeviceView("a", "cuda0+cuda1", 20 * GiB, parts=(Part("cuda0", 10 * GiB, 10 * GiB),
                                                               Part("cuda1", 10 * GiB, 10 * GiB)))
    hives = {"a": [*_hive("a", cuda0=10, cuda1=10), spread], "b": _hive("b", cpu=4)}
    done = plan("m", 22 * GiB, hives, _links(_link("a", "b")))
    assert done.spread and [(d.hive, d.device) for d in done.devices if d.hive == "a"] == \
        [("a", "cuda0"), ("a", "cuda1")]


def test_the_freshest_measure_of_a_pair_counts_either_way() -> None:
    links = _links(_link("a", "b", rtt=9.0, at=1.0), _link("b", "a", rtt=0.5, at=2.0))
    found = link_between(links, "a", "b")
    assert found is not None and found.rtt_ms_median == 0.5


def test_a_forced_spread_is_planned_even_when_one_hive_would_do() -> None:
    hives = {"a": _hive("a", cpu=40), "b": _hive("b", cpu=8, cuda0=8)}
    asked = parse_spread("a:cpu+b:cuda0")
    done = forced("m", 2 * GiB, asked, hives, _links(_link("a", "b")))
    assert done.spread and done.main == "a" and done.helpers == ["b"]
    assert [(d.hive, d.device, d.order) for d in done.devices] == [("b", "cuda0", 0), ("a", "cpu", None)]
    assert "forced spread over a:cpu+b:cuda0" in done.reason


def test_a_forced_spread_over_a_bad_link_is_refused() -> None:
    hives = {"a": _hive("a", cpu=40), "b": _hive("b", cpu=8)}
    done = forced("m", 2 * GiB, parse_spread("a:cpu+b:cpu"), hives, _links(_link("a", "b", rtt=50.0)))
    assert not done.spread and "over RBEE_SPREAD_MAX_RTT_MS" in done.reason


@pytest.mark.parametrize(("text", "message"), [
    ("a:cpu+z:cpu", "there is no ready hive 'z' (ready hives: a, b)"),
    ("a:cpu+b:cuda7", "hive 'b' has no device 'cuda7' (it has: cpu)"),
])
def test_a_forced_spread_naming_what_is_not_there(text: str, message: str) -> None:
    hives = {"a": _hive("a", cpu=40), "b": _hive("b", cpu=8)}
    with pytest.raises(SpreadRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        forced("m", 2 * GiB, parse_spread(text), hives, _links(_link("a", "b")))


def test_a_forced_spread_too_small_is_refused() -> None:
    hives = {"a": _hive("a", cpu=4), "b": _hive("b", cpu=4)}
    done = forced("m", 20 * GiB, parse_spread("a:cpu+b:cpu"), hives, _links(_link("a", "b")))
    assert not done.spread and "do not hold it" in done.reason


@pytest.mark.parametrize(("text", "message"), [
    ("a:cpu", "names one device; a spread needs two or more"),
    ("a:cpu+a:cpu", "a:cpu is named twice"),
    ("a:CPU+a:cpu", "a:cpu is named twice"),
    ("a:cuda0+a:cuda1", "every device of 'a:cuda0\\+a:cuda1' is on hive 'a'"),
    ("a+b:cpu", "'a' in 'a\\+b:cpu' is not HIVE:DEVICE"),
    ("a:cpu+b:", "'b:' in"),
    ("a:cpu+-b:cpu", "not HIVE:DEVICE"),
    ("a:cpu++b:cpu", "'' in"),
    ("+".join(f"h{i}:cpu" for i in range(17)), "at most 16 devices"),
])
def test_bad_forced_spreads_are_explained(text: str, message: str) -> None:
    with pytest.raises(BadSpread, match=message):
        parse_spread(text)


def test_a_good_forced_spread_parses() -> None:
    assert [str(d) for d in parse_spread("gaming-pc:CUDA0+mac.studio:metal")] == \
        ["gaming-pc:cuda0", "mac.studio:metal"]
