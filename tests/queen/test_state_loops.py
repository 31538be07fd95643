"""Each of the queen's background loops, failing, is logged, counted in /metrics, shown in /v1/status and
started again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from rbee.hive import model_refs
from rbee.queen.state import QueenState

LOOPS: dict[str, tuple[Callable[[QueenState], object], str]] = {
    "reap-idle": (lambda s: s.scheduler, "reap_idle"), "slot-listings": (lambda s: s.scheduler, "list_saved_slots"),
    "watch-hives": (lambda s: s, "_watch_hives"),
    "usage": (lambda s: s.usage, "flush"), "prune-audit": (lambda s: s, "_prune_audit"),
    "models-toml": (lambda s: model_refs.models_file, "refresh"), "spreads": (lambda s: s.spreads, "check")}


@pytest.mark.parametrize("name", list(LOOPS))
async def test_a_loop_that_fails_is_logged_counted_and_started_again(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    monkeypatch.setenv("RBEE_LOCAL_HIVE", "0")
    state = QueenState.create()
    owner_of, method = LOOPS[name]
    owner = owner_of(state)
    calls = 0
    again = asyncio.Event()
    failing = 2 if name == "models-toml" else 1  # the queen reads models.toml once itself before the loop starts

    async def injected() -> None:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise RuntimeError(f"injected into {name}")
        if calls > failing:
            again.set()

    monkeypatch.setattr(owner, method, injected)
    with caplog.at_level(logging.ERROR, logger="rbee.common.supervise"):
        await state.start()
        try:
            await asyncio.wait_for(again.wait(), 10)  # started again, after a 1 s back-off
        finally:
            await state.close()
    health = state.loop_health[name]
    assert health.passes >= 1 and health.last_pass_at is not None  # the pass after the failure is reported
    assert health.failures == 1 and health.last_error == f"RuntimeError: injected into {name}"
    assert f'rbee_background_failures_total{{loop="{name}"}} 1.0' in state.metrics.exposition().decode()
    assert any(name in r.getMessage() and r.exc_info for r in caplog.records)
    others = [h.failures for n, h in state.loop_health.items() if n != name]
    assert others == [0] * (len(LOOPS) - 1)
