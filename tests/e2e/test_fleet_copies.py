"""Models move between hives over the LAN (rbee/queen/copies.py, rbee/hive/shares.py, rbee/hive/peer_fetch.py).

Two hosts in network namespaces get hives by `rbee hive install`; the queen runs no local hive. The fake hub
listens on the LAN bridge and counts file downloads: a model the fleet holds is fetched from it once in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import catalog, models_dir, pull_job
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import Host, Lan

MIB = 2**20
PINNED = "rbee-test/pinned-GGUF:Q4_K_M"
CORRUPT = "rbee-test/corrupt-GGUF:Q4_K_M"
PLACED = "rbee-test/placed-GGUF:Q4_K_M"
KEPT = "rbee-test/kept-GGUF:Q4_K_M"
FILE = "m-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return padded_tiny_model(tmp_path_factory.mktemp("copymodel"))


@pytest.fixture(scope="module")
def hub(lan: Lan, payload: bytes) -> Iterator[FakeHub]:
    with FakeHub().start(lan.gateway) as hub:
        for model in (PINNED, CORRUPT, PLACED, KEPT):
            hub.add_repo(model.split(":")[0], {FILE: payload})
        yield hub


@pytest.fixture(scope="module")
def fleet(lan: Lan, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    with installed_fleet(lan, home, llama_server, hub.env(home)) as queen:
        yield queen


def hub_gets(hub: FakeHub, model: str) -> int:
    return sum(1 for method, path, _ in hub.requests if method == "GET" and f"{model.split(':')[0]}/resolve/" in path)


def test_a_request_pinned_to_a_hive_without_the_model_is_served_after_a_lan_copy(
        fleet: Queen, lan: Lan, hub: FakeHub, payload: bytes) -> None:
    assert pull_job(fleet, PINNED, "h1")[-1]["type"] == "done"
    assert hub_gets(hub, PINNED) == 1 and PINNED not in catalog(fleet, "h2")
    resp = httpx.post(f"{fleet.url}/v1/chat/completions", headers={"X-Rbee-Hive": "h2"}, timeout=240,
                      json={"model": PINNED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rbee-hive"] == "h2"
    assert (models_dir(lan.host("h2")) / "rbee-test/pinned-GGUF" / FILE).read_bytes() == payload
    assert catalog(fleet, "h2")[PINNED]["sha256"]
    assert hub_gets(hub, PINNED) == 1  # the hub was asked for the file once in all: h2's came from h1


def test_a_corrupted_peer_copy_is_refused_and_the_next_source_used(
        fleet: Queen, lan: Lan, hub: FakeHub, payload: bytes) -> None:
    assert pull_job(fleet, CORRUPT, "h1")[-1]["type"] == "done"
    on_h1 = models_dir(lan.host("h1")) / "rbee-test/corrupt-GGUF" / FILE
    data = bytearray(on_h1.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit on h1's disk, after its catalog recorded the sha256
    on_h1.write_bytes(bytes(data))
    pulled = fleet.cli("model", "pull", CORRUPT, "-a", "h2", timeout=240)
    assert pulled.returncode == 0, pulled.stderr
    assert "the copy from hive 'h1' failed" in pulled.stderr and "sha256" in pulled.stderr
    assert "downloaded from the hub" in pulled.stderr
    on_h2 = models_dir(lan.host("h2"))
    assert (on_h2 / "rbee-test/corrupt-GGUF" / FILE).read_bytes() == payload
    assert not [p for p in (on_h2 / ".partial").rglob("*") if p.is_file()]
    assert hub_gets(hub, CORRUPT) == 2


def test_a_copy_says_where_it_came_from_and_a_third_host_cannot_fetch(fleet: Queen, lan: Lan, hub: FakeHub) -> None:
    h1 = lan.host("h1")
    fleet.cli("model", "rm", PINNED, "-a", "h2", check=True, timeout=60)
    pulled = fleet.cli("model", "pull", PINNED, "-a", "h2", check=True, timeout=240)
    assert "copied from hive h1 over the LAN" in pulled.stderr
    assert hub_gets(hub, PINNED) == 1
    share = f"http://{h1.address}:7835/v1/hive/shares/share-0123456789abcdef/files/0"
    for headers in ({}, {"Authorization": "Bearer guessed-token-guessed-token"}):  # the test process: a third host
        refused = httpx.get(share, headers=headers, timeout=10)
        assert refused.status_code == 401, refused.text
    assert httpx.get(f"http://{h1.address}:7835/v1/hive/report", timeout=10).status_code == 401


def _ready(queen: Queen, alias: str) -> bool:
    hives = httpx.get(f"{queen.url}/v1/hives", timeout=10).json()
    return any(h["alias"] == alias and h["state"] == "ready" for h in hives)


def _budget(fleet: Queen, host: Host, budget: str | None) -> None:
    """Set (or, with None, drop) the hive's memory_budget in its hive.toml and restart it."""
    config = host.home / ".config" / "rbee" / "hive.toml"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("memory_budget")]
    config.write_text("\n".join(lines + ([f'memory_budget = "{budget}"'] if budget else [])) + "\n")
    fleet.cli("hive", "restart", host.name, check=True, timeout=120)
    assert wait_for(lambda: _ready(fleet, host.name), 60), f"{host.name} did not come back"


def test_placement_copies_a_model_to_another_hive_when_its_holder_is_full(
        fleet: Queen, lan: Lan, hub: FakeHub) -> None:
    """h1 holds both models and has room for one worker; a worker of KEPT that min_replicas keeps there fills
    it (it is never evicted). An unpinned request for PLACED, which only h1 holds, is served by h2 after a LAN
    copy from h1, instead of waiting for h1 indefinitely; the hub is never asked for it again."""
    for model in (PLACED, KEPT):
        assert pull_job(fleet, model, "h1")[-1]["type"] == "done"
        fleet.cli("model", "set", model, "--ctx", "65536", "--slots", "1", check=True)
    try:
        sized = httpx.post(f"{fleet.url}/v1/chat/completions", headers={"X-Rbee-Hive": "h1"}, timeout=240,
                           json={"model": PLACED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert sized.status_code == 200, sized.text
        [worker] = [w for w in fleet.workers() if w["model"] == PLACED]
        fleet.cli("worker", "stop", str(worker["id"]), check=True, timeout=60)
        need = int(worker["memory_bytes"])  # as the queen sizes it, with the settings above (KEPT's alike)
        _budget(fleet, lan.host("h1"), f"{need * 3 // 2 // MIB}MiB")  # room for one worker, not two
        fleet.cli("model", "set", KEPT, "--on-hive", "h1", "--min-replicas", "1", check=True)
        assert wait_for(lambda: any(w["model"] == KEPT and w["state"] == "ready" for w in fleet.workers()), 120)
        resp = httpx.post(f"{fleet.url}/v1/chat/completions", timeout=240,
                          json={"model": PLACED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-rbee-hive"] == "h2"
        assert [w["hive"] for w in fleet.workers() if w["model"] == KEPT and w["state"] == "ready"] == ["h1"]
        assert PLACED in catalog(fleet, "h2")
        assert hub_gets(hub, PLACED) == 1  # h2's file came from h1, not the hub
        queen_log = (Path(fleet.env["RBEE_HOME"]) / "state" / "queen.log").read_text()
        assert "a worker for rbee-test/placed-GGUF:Q4_K_M: no hive holding it has room: h1 has" in queen_log
        assert "copying it to h2" in queen_log
    finally:
        for model in (PLACED, KEPT):
            fleet.cli("model", "set", model, "--reset", check=True)
        _budget(fleet, lan.host("h1"), None)
