from __future__ import annotations

from rbee.queen.placement import DeviceView
from rbee.queen.pull_placement import GiB, MiB, PullCandidate, choose, estimate_need

SIZE = int(4.7 * GiB)
NEED = estimate_need(SIZE)


def _hive(alias: str, *devices: tuple[str, float], disk: float | None = 100.0, has_model: bool = False,
          problem: str | None = None) -> PullCandidate:
    views = tuple(DeviceView(alias, device, int(total * GiB), has_model=True) for device, total in devices)
    return PullCandidate(alias, views, int(disk * GiB) if disk is not None else None, has_model, problem)


def test_the_need_is_the_files_plus_a_margin() -> None:
    assert SIZE < NEED < 2 * SIZE
    assert estimate_need(3 * MiB) > 256 * MiB  # the runtime's overhead, however small the model


def test_a_gpu_hive_before_a_cpu_hive() -> None:
    choice = choose(NEED, SIZE, [_hive("mac", ("cpu", 64)), _hive("gaming-pc", ("cuda0", 24), ("cpu", 32))])
    assert [r.hive for r in choice.ranked] == ["gaming-pc", "mac"]
    assert choice.best is not None and choice.best.device == "cuda0"
    line = choice.explain()
    assert line.startswith("placing on gaming-pc: its cuda0 has 24.0 GiB for the ~")
    assert "4.7 GiB model needs" in line and "mac has no GPU that holds it (its CPU has 64.0 GiB)" in line


def test_the_tightest_fit_then_the_most_free_disk() -> None:
    choice = choose(NEED, SIZE, [_hive("big", ("cuda0", 48)), _hive("small", ("cuda0", 12))])
    assert [r.hive for r in choice.ranked] == ["small", "big"]
    assert "big would leave more memory unused" in choice.explain()
    # within a GiB the fits are equal (free memory comes and goes): free disk decides
    tie = choose(NEED, SIZE, [_hive("a", ("cpu", 20.2), disk=50), _hive("b", ("cpu", 20.3), disk=400)])
    assert [r.hive for r in tie.ranked] == ["b", "a"]
    assert "a has less free disk (50.0 GiB against 400.0 GiB)" in tie.explain()
    close = choose(NEED, SIZE, [_hive("a", ("cpu", 20), disk=50), _hive("b", ("cpu", 20), disk=50.001)])
    assert "a has a little less free disk (both about 50.0 GiB)" in close.explain()


def test_a_disk_too_small_is_out_with_its_numbers() -> None:
    choice = choose(NEED, SIZE, [_hive("full", ("cuda0", 24), disk=2), _hive("roomy", ("cpu", 32))])
    assert [r.hive for r in choice.ranked] == ["roomy"]
    assert choice.excluded == (("full", "has 2.0 GiB free for models, the files need 4.7 GiB"),)
    assert choice.explain().endswith("; full has 2.0 GiB free for models, the files need 4.7 GiB")


def test_an_unreachable_hive_and_one_too_small_to_run_it_are_out() -> None:
    choice = choose(NEED, SIZE, [_hive("away", ("cuda0", 80), problem="is unreachable: no heartbeat for 40 s"),
                                 _hive("tiny", ("cpu", 4)), _hive("ok", ("cpu", 16))])
    assert [r.hive for r in choice.ranked] == ["ok"]
    assert dict(choice.excluded) == {
        "away": "is unreachable: no heartbeat for 40 s",
        "tiny": f"cannot run it: a worker needs ~{NEED / GiB:.1f} GiB but its largest device has 4.0 GiB",
    }


def test_a_hive_that_holds_it_comes_first_and_needs_no_disk() -> None:
    choice = choose(NEED, SIZE, [_hive("gpu", ("cuda0", 24)), _hive("has", ("cpu", 16), disk=0, has_model=True)])
    assert [r.hive for r in choice.ranked] == ["has", "gpu"]
    assert choice.explain() == "placing on has: it already holds the model; gpu does not hold it yet"


def test_no_hive_can_take_it_says_why_for_each() -> None:
    choice = choose(NEED, SIZE, [_hive("h1", ("cpu", 32), disk=1), _hive("h2", ("cpu", 2))])
    assert choice.best is None
    refusal = choice.refusal()
    assert refusal.startswith("no hive can take the model (files 4.7 GiB, a worker needs ~")
    assert "h1 has 1.0 GiB free for models" in refusal and "h2 cannot run it" in refusal
    assert choice.explain() == refusal
    assert "no hive is ready" in choose(NEED, SIZE, []).refusal()


def test_an_unknown_free_disk_is_not_refused_but_ranks_after_a_known_one() -> None:
    choice = choose(NEED, SIZE, [_hive("old", ("cpu", 32), disk=None), _hive("new", ("cpu", 32), disk=10)])
    assert [r.hive for r in choice.ranked] == ["new", "old"]
    assert "old has less free disk (unknown against 10.0 GiB)" in choice.explain()
