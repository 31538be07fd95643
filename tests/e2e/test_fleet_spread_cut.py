"""A spread across hives whose RPC path is cut mid-stream while the helper hive still runs (issue 21, point 5):
the two hives cannot reach each other any more, but each still answers the queen. The client's stream ends
with an error event, the worker goes to `error` with a reason naming the helper and the link, every process of
the spread is stopped on both hives, the broken link's measure is forgotten, and the next request is placed
again (the model fits one hive: it is served there).

The fleet of tests/e2e/test_fleet_spread_run.py (two hosts in network namespaces, hives by `rbee hive install`,
no local hive); the path between the hosts is cut by a blackhole route on each side (Lan.cut_between), the
way a switch port or a firewall between two machines fails, while both keep their link to the queen.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx

from tests.conftest import Queen, wait_for
from tests.e2e import test_fleet_spread_run as spread_run
from tests.e2e.test_fleet_spread_run import ASK, report, spread_worker, stop_all, stream_acting
from tests.fixtures.lan import Lan

fleet = spread_run.fleet


def _alive(pid: int | None) -> bool:
    return pid is not None and os.path.exists(f"/proc/{pid}")  # the namespaces share this machine's pids


def _stream_until_cut(fleet: Queen, lan: Lan, main: str, helper: str) -> tuple[list[str], float]:
    """A long stream, the path between `main` and `helper` cut after its second event; its events, and how
    long it went on after the cut."""
    cut_at: list[float] = []

    def cut() -> None:
        lan.cut_between(main, helper)
        cut_at.append(time.monotonic())

    events = stream_acting(fleet, cut)
    return events, time.monotonic() - cut_at[0]


def test_a_spread_whose_link_is_cut_mid_stream_ends_everywhere_and_the_next_request_is_placed_again(
        fleet: Queen, lan: Lan) -> None:
    worker, main, helper = spread_worker(fleet)
    (lent,) = report(lan, helper)["rpc_servers"]
    main_pid = next(w["info"]["pid"] for w in report(lan, main)["workers"] if w["info"]["id"] == worker["id"])
    assert _alive(lent["pid"]) and _alive(main_pid)
    try:
        events, after_cut = _stream_until_cut(fleet, lan, main, helper)
        assert events[-1] != "[DONE]" and "error" in json.loads(events[-1]), events[-3:]

        def failed() -> dict[str, Any] | None:
            return next((w for w in fleet.workers() if w["id"] == worker["id"] and w["state"] == "error"), None)
        named = f"the RPC link between main hive '{main}' and helper hive '{helper}' broke"
        assert wait_for(lambda: named in str((failed() or {}).get("error")), 60), fleet.workers()
        reason = str((failed() or {})["error"])
        assert "while both hives still answer the queen" in reason, reason
        # every process of the spread stopped, on both hives: the rpc-server, both channel ends, llama-server
        assert wait_for(lambda: not report(lan, helper)["rpc_servers"] and not report(lan, helper)["channels"]
                        and not report(lan, main)["channels"], 60), (report(lan, helper), report(lan, main))
        assert wait_for(lambda: not _alive(lent["pid"]) and not _alive(main_pid), 30)
        # the helper never stopped answering the queen: it is still a ready hive
        states = {h["alias"]: h["state"] for h in httpx.get(f"{fleet.url}/v1/hives", timeout=10).json()}
        assert states == {"h1": "ready", "h2": "ready"}, states
        # the broken link's measure is forgotten: the next spread measures it again
        links = httpx.get(f"{fleet.url}/v1/links", timeout=10).json()["links"]
        assert not [m for m in links if {m["source"], m["peer"]} == {main, helper}], links
        # placed again, with the link still cut: the model fits one hive, so one hive serves it, no spread
        again = httpx.post(f"{fleet.url}/v1/completions", json=ASK, timeout=120)
        assert again.status_code == 200 and again.json()["choices"][0]["text"].strip(), again.text
        (serving,) = [w for w in fleet.workers() if w["state"] == "ready"]
        assert serving["id"] != worker["id"] and "(rpc)" not in str(serving.get("offload")), serving
        print(f"\nthe stream ended {after_cut:.1f} s after the cut; the worker's reason: {reason[:400]}")
    finally:
        lan.join_between(main, helper)
        stop_all(fleet)
