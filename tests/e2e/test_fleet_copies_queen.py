"""The queen's own hive as a copy source, and a source that vanishes mid-copy (rbee/queen/share_routes.py,
rbee/queen/copies.py, rbee/hive/peer_fetch.py), on two netns hosts installed by `rbee hive install`.

Unlike tests/e2e/test_fleet_copies.py the queen runs its embedded hive here. The fake hub listens on the LAN
bridge and counts file downloads: a model the fleet holds is fetched from it once in all.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import catalog, models_dir, pull_job
from tests.e2e.test_fleet_copies import hub_gets
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded
from tests.fixtures.lan import Lan
from tests.fixtures.tiny_gguf import write_tiny_model

MIB = 2**20
QUEENS = "rbee-test/queens-GGUF:Q4_K_M"  # only on the queen's machine
BIG = "rbee-test/big-GGUF:Q4_K_M"  # on h1 and the queen's machine; h1 is cut off while h2 copies it
FILE = "m-Q4_K_M.gguf"
RATE = "32mbit"  # into h2: a 24 MiB copy takes ~6 s, long enough to cut its source mid-way


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_model(tmp_path_factory.mktemp("copymodel") / "m.gguf").read_bytes()


@pytest.fixture(scope="module")
def hub(lan: Lan, model: bytes) -> Iterator[FakeHub]:
    with FakeHub().start(lan.gateway) as hub:
        hub.add_repo(QUEENS.split(":")[0], {FILE: padded(model, 3 * MIB)})
        hub.add_repo(BIG.split(":")[0], {FILE: padded(model, 24 * MIB)})
        yield hub


@pytest.fixture(scope="module")
def fleet(lan: Lan, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    with installed_fleet(lan, home, llama_server, {**hub.env(home), "RBEE_LOCAL_HIVE": "1"}) as queen:
        yield queen


def test_a_model_only_on_the_queens_machine_is_copied_from_the_queen_to_a_pinned_hive(
        fleet: Queen, lan: Lan, hub: FakeHub, model: bytes) -> None:
    assert pull_job(fleet, QUEENS, "localhost")[-1]["type"] == "done"
    assert hub_gets(hub, QUEENS) == 1 and QUEENS not in catalog(fleet, "h1") and QUEENS not in catalog(fleet, "h2")
    resp = httpx.post(f"{fleet.url}/v1/chat/completions", headers={"X-Rbee-Hive": "h1"}, timeout=240,
                      json={"model": QUEENS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rbee-hive"] == "h1"
    assert (models_dir(lan.host("h1")) / "rbee-test/queens-GGUF" / FILE).read_bytes() == padded(model, 3 * MIB)
    assert hub_gets(hub, QUEENS) == 1  # h1's came from the queen's machine, over the LAN
    # a host the share was not opened for, with a guessed token: refused by the queen
    queen_url = f"http://{lan.gateway}:{fleet.port}/v1/hive/shares/share-0123456789abcdef/files/0"
    probe = ("import sys, urllib.request, urllib.error\ntry:\n urllib.request.urlopen(urllib.request.Request("
             f"{queen_url!r}, headers={{'Authorization': 'Bearer guessed-token-guessed-token'}}), timeout=10)\n"
             " print(200)\nexcept urllib.error.HTTPError as e:\n print(e.code)")
    assert lan.run("h2", "/usr/bin/python3", "-c", probe, timeout=30).stdout.strip() == "401"


def test_a_source_cut_off_mid_copy_is_given_up_and_the_next_one_completes_the_copy(
        fleet: Queen, lan: Lan, hub: FakeHub, model: bytes) -> None:
    assert pull_job(fleet, BIG, "h1")[-1]["type"] == "done"
    assert pull_job(fleet, BIG, "localhost")[-1]["type"] == "done"  # copied from h1, not the hub
    assert hub_gets(hub, BIG) == 1
    h1, h2 = lan.host("h1"), lan.host("h2")
    partial = models_dir(h2) / ".partial"

    def received() -> int:
        return sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) if partial.exists() else 0

    subprocess.run(["tc", "qdisc", "add", "dev", h2.veth, "root", "tbf", "rate", RATE, "burst", "64kb",
                    "latency", "400ms"], check=True)
    try:
        with ThreadPoolExecutor(1) as pool:
            pulling = pool.submit(fleet.cli, "model", "pull", BIG, "-a", "h2", timeout=300)
            assert wait_for(lambda: received() >= 2 * MIB, 60), "the copy from h1 never started"
            lan.link_down(h1)  # h1 vanishes mid-copy
            try:
                assert 0 < received() < 24 * MIB  # caught mid-way: still in .partial, not all there
                pulled = pulling.result(timeout=300)
            finally:
                lan.link_up(h1)
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", h2.veth, "root"], check=False)
    assert pulled.returncode == 0, pulled.stderr
    assert "the copy from hive 'h1' failed" in pulled.stderr, pulled.stderr
    assert "copied from hive localhost" in pulled.stderr, pulled.stderr
    on_h2 = (models_dir(h2) / "rbee-test/big-GGUF" / FILE).read_bytes()
    assert hashlib.sha256(on_h2).hexdigest() == hashlib.sha256(padded(model, 24 * MIB)).hexdigest()
    assert not [p for p in partial.rglob("*") if p.is_file()]  # nothing partial left
    assert hub_gets(hub, BIG) == 1
