"""Each of the queen's background loops, failing, is logged, counted in /metrics, shown in /v1/status and
started again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from rbee.queen.state import QueenState

LOOPS = {"reap-idle": ("scheduler", "reap_idle"), "watch-hives": (None, "_watch_hives"),
         "usage": ("usage", "flush"), "prune-audit": (None, "_prune_audit")}


@pytest.mark.parametrize("name", list(LOOPS))
async def test_a_loop_that_fails_is_logged_counted_and_started_again(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RBEE_HOME", str(tmp_path))
    monkeypatch.setenv("RBEE_LOCAL_HIVE", "0")
    state = QueenState.create()
    owner_attr, method = LOOPS[name]
    owner = getattr(state, owner_attr) if owner_attr else state
    calls = 0
    again = asyncio.Event()

    async def injected() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError(f"injected into {name}")
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
    assert others == [0, 0, 0]
