"""A spread across hives carried out (issue 21): `rbee worker start MODEL --device h1:cpu+h2:cpu` starts a
ggml-rpc-server on the helper (127.0.0.1 only), the channel between the hives (mutual TLS, pinned per spread)
and llama-server on the main hive with `--rpc`; the answer equals one host's, token for token, with greedy
sampling; nobody else reaches the rpc-server; a helper that dies mid-stream ends the spread everywhere.

Two hosts in network namespaces get hives by `rbee hive install`; the queen runs no local hive. The test
process is a third host: the LAN bridge's address, no hive of its own.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import pull_job
from tests.e2e.test_fleet_spreads import hive_url, join_token, set_budget
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import Lan
from tests.fixtures.tiny_gguf import N_EMBD, write_tiny_model

MIB = 2**20

MODEL = "rbee-test/spreadrun-GGUF:Q4_K_M"
BIG = "rbee-test/spreadcache-GGUF:Q4_K_M"  # FFN matrices over ggml-rpc's 10 MiB hash threshold
FFN_LENGTH = 90112
FFN_BYTES = FFN_LENGTH * N_EMBD * 2  # one f16 FFN matrix: 11 MiB
ASK = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def fleet(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    with FakeHub().start(lan.gateway) as hub:
        hub.add_repo(MODEL.split(":")[0], {"m-Q4_K_M.gguf": padded_tiny_model(tmp_path_factory.mktemp("m"))})
        big = write_tiny_model(tmp_path_factory.mktemp("big") / "m.gguf", ffn_length=FFN_LENGTH)
        hub.add_repo(BIG.split(":")[0], {"m-Q4_K_M.gguf": big.read_bytes()})
        with installed_fleet(lan, home, llama_server, hub.env(home)) as queen:  # the default link bounds
            assert pull_job(queen, MODEL, "h1")[-1]["type"] == "done"
            assert pull_job(queen, BIG, "h1")[-1]["type"] == "done"
            assert pull_job(queen, BIG, "h2")[-1]["type"] == "done"  # no copy of the file in a load's bytes
            yield queen


def report(lan: Lan, host: str) -> dict[str, Any]:
    h = lan.host(host)
    resp = httpx.get(f"{hive_url(h)}/v1/hive/report", headers={"Authorization": f"Bearer {join_token(h)}"},
                     timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def complete(fleet: Queen, model: str = MODEL) -> str:
    """The greedy answer to ASK from `model`, through the queen."""
    resp = httpx.post(f"{fleet.url}/v1/completions", json={**ASK, "model": model}, timeout=120)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["text"])


def stop_all(fleet: Queen) -> None:
    for w in fleet.workers():
        if w["state"] not in ("stopped", "error"):
            assert httpx.delete(f"{fleet.url}/v1/workers/{w['id']}", timeout=60).status_code == 200


def link_bytes(lan: Lan, host: str) -> int:
    """Bytes received and sent on `host`'s LAN interface so far (its network namespace's /proc/net/dev)."""
    shown = lan.run(host, "cat", "/proc/net/dev", check=True, timeout=30).stdout
    (eth0,) = [line.split(":", 1)[1].split() for line in shown.splitlines() if line.strip().startswith("eth0:")]
    return int(eth0[0]) + int(eth0[8])


def spread_worker(fleet: Queen, model: str = MODEL, share: str = "50%") -> tuple[dict[str, Any], str, str]:
    """The spread's worker, its main hive and its helper (lending `share` of the layers, a pattern)."""
    started = fleet.cli("worker", "start", model, "--device", "h1:cpu+h2:cpu", timeout=300)
    assert started.returncode == 0 and "Traceback" not in started.stderr, started.stderr
    said = started.stdout + started.stderr
    assert "(rpc)" in said, said
    (worker,) = [w for w in fleet.workers() if w["model"] == model and w["state"] == "ready"]
    main = str(worker["hive"])
    helper = "h2" if main == "h1" else "h1"
    assert re.search(rf"{helper}:cpu {share} \(rpc\)", said) and f"{helper}:cpu" in worker["offload"], (said, worker)
    return dict(worker), main, helper


def shown_under_the_helper(fleet: Queen, worker: dict[str, Any], helper: str, lent: int) -> None:
    """Status, `rbee hive status HELPER` and /metrics list the spread's worker under the helper's CPU too,
    with its share and the bytes its rpc-server holds there (`lent`)."""
    (shown,) = [w for w in httpx.get(f"{fleet.url}/v1/status", timeout=10).json()["workers"] if w["id"] == worker["id"]]
    (there,) = [p for p in shown["parts"] if p["hive"] == helper]
    assert there["device"] == "cpu" and abs(there["share"] - 0.5) < 0.02 and there["memory_bytes"] == lent, shown
    said = fleet.cli("hive", "status", helper, check=True, timeout=60).stdout
    assert worker["id"] in said and f"{helper}:cpu 50% (rpc)" in said, said
    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
        return {(f.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
                for s in f.samples}
    labels = tuple(sorted({"device": "cpu", "hive": helper, "model": MODEL, "worker": worker["id"]}.items()))
    now = samples()
    assert now[("rbee_worker_device_share", labels)] == there["share"], now
    assert now[("rbee_worker_memory_bytes", labels)] == lent
    used = ("rbee_hive_memory_bytes", (("device", "cpu"), ("hive", helper), ("kind", "used")))
    assert wait_for(lambda: samples()[used] == lent, 30)  # the helper's next heartbeat reports its rpc-server


@pytest.fixture(scope="module")
def alone(fleet: Queen) -> str:
    """The answer of one host's worker (h1's CPU), the reference; then no worker is left."""
    fleet.cli("worker", "start", MODEL, "-a", "h1", "--device", "cpu", check=True, timeout=300)
    try:
        return complete(fleet)
    finally:
        stop_all(fleet)


def test_a_spread_over_two_hosts_answers_as_one_host_token_for_token(fleet: Queen, lan: Lan, alone: str) -> None:
    assert alone.strip()
    before = {h: link_bytes(lan, h) for h in ("h1", "h2")}
    worker, main, helper = spread_worker(fleet)
    loaded = link_bytes(lan, helper) - before[helper]  # the helper's share of the weights came over the link
    try:
        lending, serving = report(lan, helper), report(lan, main)
        (lent,) = lending["rpc_servers"]
        assert lent["state"] == "ready" and [d["device"] for d in lent["devices"]] == ["cpu"]
        assert lent["devices"][0]["memory"] > 0
        shown_under_the_helper(fleet, worker, helper, lent["devices"][0]["memory"])
        assert [c["role"] for c in lending["channels"]] == ["listen"]
        assert [c["role"] for c in serving["channels"]] == ["dial"]
        start = link_bytes(lan, helper)
        assert complete(fleet) == alone  # greedy, same seed: the same tokens across two machines
        asked = link_bytes(lan, helper) - start
        assert report(lan, main)["channels"][0]["connections"] >= 1  # llama-server's RPC goes through the channel
        assert complete(fleet) == alone
        again = link_bytes(lan, helper) - start - asked
        # a request moves activations, not weights: far less than the load (heartbeats included)
        assert again < loaded / 4 and asked < loaded / 4, (loaded, asked, again)
    finally:
        stop_all(fleet)
    # a spread stopped on request leaves nothing anywhere: the rpc-server and both channel ends are gone
    assert wait_for(lambda: not report(lan, helper)["rpc_servers"] and not report(lan, helper)["channels"]
                    and not report(lan, main)["channels"], 30)


def _refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=5):
            return False
    except OSError:
        return True


def test_no_other_host_reaches_the_rpc_server_or_the_channel(fleet: Queen, lan: Lan) -> None:
    _, main, helper = spread_worker(fleet)
    try:
        lending = report(lan, helper)
        port, listen = lending["rpc_servers"][0]["port"], lending["channels"][0]["port"]
        address = lan.host(helper).address
        assert _refused(address, port)  # this host (the LAN's third): rpc-server is on h2's loopback only
        probe = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)\n" \
                " print('open')\nexcept OSError:\n print('refused')"
        from_main = lan.run(main, "python3", "-c", probe, address, str(port), timeout=30)
        assert from_main.stdout.strip() == "refused", from_main.stderr  # nor the main hive, but by its channel
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((address, listen), timeout=5) as raw:  # the channel, with no certificate
            with pytest.raises((ssl.SSLError, OSError)):
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"\0" * 64)
                    assert tls.recv(1) == b""  # TLS 1.3: the refusal of the missing certificate comes here
                    raise OSError("closed")
        assert complete(fleet)  # the spread still answers
    finally:
        stop_all(fleet)


def _load_once(fleet: Queen, lan: Lan, helper: str) -> int:
    """The big model spread with `helper` lending, asked, stopped: the bytes that crossed the helper's link
    while it loaded (both hives hold the file, so they are the RPC client's: tensors and hashes)."""
    before, started = link_bytes(lan, helper), time.monotonic()
    _, _, lent_by = spread_worker(fleet, BIG, share=r"4\d%")
    sent = link_bytes(lan, helper) - before
    print(f"helper {helper}: {sent} bytes on its link, loaded in {time.monotonic() - started:.1f} s")
    try:
        assert lent_by == helper
        assert complete(fleet, BIG)
    finally:
        stop_all(fleet)
    assert wait_for(lambda: not report(lan, helper)["rpc_servers"], 30)
    return sent


def _cached(lan: Lan, host: str) -> list[int]:
    """The sizes of the tensors in `host`'s rpc-server cache (`-c`: LLAMA_CACHE/rpc, named by their hash)."""
    return sorted(f.stat().st_size for f in (lan.host(host).home / ".local" / "state").glob("**/hive/rpc/cache/rpc/*"))


@pytest.mark.parametrize("helper", ["h2", "h1"])
def test_a_reload_takes_the_big_tensors_from_the_helpers_cache(fleet: Queen, lan: Lan, helper: str) -> None:
    """Issue 21 point 3: rpc-server's `-c` cache keeps the tensors over 10 MiB it received, so a helper that
    lends to the same model again gets their hashes, not their bytes. The helper holds one of the two layers
    and the output layer (-ngl 2); of their tensors, the layer's three 11 MiB FFN matrices pass that bound.
    The main hive is the one with the most room, so the helper gets 1 MiB less budget than the other (about
    half the layers: less the runtime of a second device), and each hive is the helper once."""
    main = "h1" if helper == "h2" else "h2"
    set_budget(fleet, lan.host(main), "4096MiB")
    set_budget(fleet, lan.host(helper), "4095MiB")
    assert _cached(lan, helper) == []  # this run's own weights: none of them were lent before
    held = _cached(lan, main)  # what it kept as the helper, if it was one
    first = _load_once(fleet, lan, helper)
    assert _cached(lan, helper) == [FFN_BYTES] * 3 and _cached(lan, main) == held
    reloaded = _load_once(fleet, lan, helper)
    assert first > 3 * FFN_BYTES, (first, reloaded)  # the first load sent the FFN matrices
    # the reload sent not one of them (their hashes), only the small tensors (attention, norms, output) and
    # heartbeats; a link measure (4 MiB) may fall in a load too
    assert reloaded < FFN_BYTES, (first, reloaded)


def _hive_pid(lan: Lan, host: str) -> int:
    """The pid of `host`'s hive, from the pid file it keeps in its state folder."""
    (pid_file,) = (lan.host(host).home / ".local" / "state").glob("**/hive.pid")
    return int(pid_file.read_text().strip())


def test_a_model_no_hive_holds_is_spread_by_a_request_and_answers_the_same(fleet: Queen, lan: Lan,
                                                                          alone: str) -> None:
    """It shrinks both hives (each gets 80 % of the model's need; together they hold it), as
    test_fleet_spreads does for the plan; the next tests keep them so."""
    fleet.cli("model", "set", MODEL, "--ctx", "65536", "--slots", "1", check=True, timeout=60)
    need = int(httpx.post(f"{fleet.url}/v1/spreads/plan", json={"model": MODEL}, timeout=120).json()["need"])
    for host in ("h1", "h2"):
        set_budget(fleet, lan.host(host), f"{need * 4 // 5 // MIB}MiB")
    assert complete(fleet) == alone  # the scheduler's load step: no one hive holds it, so a spread does
    (worker,) = [w for w in fleet.workers() if w["state"] == "ready"]
    helper = "h2" if worker["hive"] == "h1" else "h1"
    assert f"{helper}:cpu" in worker["offload"] and "(rpc)" in worker["offload"], worker
    (lent,) = report(lan, helper)["rpc_servers"]
    (cpu,) = lent["devices"]
    assert cpu["device"] == "cpu" and 0 < cpu["memory"] < need  # the helper's share of the need, booked on its CPU


def stream_acting(fleet: Queen, act: Callable[[], object]) -> list[str]:
    """A long stream through the queen, `act` done after its second event; the events' data."""
    events: list[str] = []
    with httpx.stream("POST", f"{fleet.url}/v1/completions", json={**ASK, "max_tokens": 4000, "stream": True,
                                                                    "ignore_eos": True}, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 2:
                    act()
    return events


def test_a_helper_killed_mid_stream_ends_the_spread_everywhere(fleet: Queen, lan: Lan) -> None:
    """Last: it kills the helper's hive (its rpc-server dies with it). The spread the last test started serves."""
    (worker,) = [w for w in fleet.workers() if w["state"] == "ready"]
    main = str(worker["hive"])
    helper = "h2" if main == "h1" else "h1"
    pid = _hive_pid(lan, helper)
    events = stream_acting(fleet, lambda: subprocess.run(["kill", "-9", str(pid)], check=True))
    assert events[-1] != "[DONE]" and "error" in json.loads(events[-1]), events[-3:]

    def failed() -> dict[str, Any] | None:
        return next((w for w in fleet.workers() if w["id"] == worker["id"] and w["state"] == "error"), None)
    # llama-server aborts when its rpc-server goes; the queen's spread watch then names the helper that is gone
    assert wait_for(lambda: f"helper hive '{helper}' does not answer" in str((failed() or {}).get("error")), 60), \
        fleet.workers()
    assert wait_for(lambda: not report(lan, main)["channels"] and not any(
        w["info"]["state"] in ("ready", "starting") for w in report(lan, main)["workers"]), 60)
    # placed again: the main hive alone cannot hold it, and no spread can: refused with the numbers
    again = httpx.post(f"{fleet.url}/v1/completions", json=ASK, timeout=120)
    said = again.json()["error"]
    assert again.status_code == 400 and said["code"] == "model_too_large", again.text
    assert "Nor can a spread across hives hold it" in said["message"] and "GiB" in said["message"], said
    assert not [w for w in fleet.workers() if w["state"] in ("ready", "starting")]
