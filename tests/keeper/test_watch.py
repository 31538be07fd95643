"""rbee/keeper/watch.py: a spread across hives' worker shows under each device it uses, on every hive."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from rbee.keeper.watch import devices_table, held_on

GIB = 2**30
SPREAD: dict[str, Any] = {
    "id": "w1", "model": "big", "hive": "h1", "state": "ready", "memory_bytes": 3 * GIB, "device": "cpu",
    "device_memory": {"cpu": 3 * GIB}, "offload": "h2:cpu 50% (rpc) + h1:cpu 50%",
    "parts": [{"hive": "h2", "device": "cpu", "share": 0.5, "memory_bytes": 3 * GIB},
              {"hive": "h1", "device": "cpu", "share": 0.5, "memory_bytes": 3 * GIB}]}


def _hive(alias: str) -> dict[str, Any]:
    return {"alias": alias, "state": "ready", "devices": [{"id": "cpu", "name": "CPU", "total_bytes": 8 * GIB}]}


def _shown(hives: list[dict[str, Any]], workers: list[dict[str, Any]]) -> str:
    console = Console(file=io.StringIO(), width=250)
    console.print(devices_table(hives, workers))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_a_spread_worker_holds_its_share_on_the_helpers_device() -> None:
    assert held_on(SPREAD, "h1") == {"cpu": 3 * GIB}
    assert held_on(SPREAD, "h2") == {"cpu": 3 * GIB}
    assert held_on(SPREAD, "h3") == {}
    plain = {**SPREAD, "parts": []}
    assert held_on(plain, "h2") == {}


def test_the_devices_table_lists_a_spread_worker_under_the_helper_with_its_share_and_bytes() -> None:
    shown = _shown([_hive("h2")], [SPREAD])
    assert "w1 (big: h2:cpu 50% (rpc) + h1:cpu 50%)" in shown
    assert "3.0 GB / 8.0 GB" in shown, shown  # the helper's CPU holds the share booked there


def test_a_stopped_spread_worker_is_under_no_device() -> None:
    shown = _shown([_hive("h2")], [{**SPREAD, "state": "stopped"}])
    assert "w1" not in shown
