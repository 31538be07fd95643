"""A spread across hives carried out (issue 21): `rbee worker start MODEL --device h1:cpu+h2:cpu` starts a
ggml-rpc-server on the helper (127.0.0.1 only), the channel between the hives (mutual TLS, pinned per spread)
and llama-server on the main hive with `--rpc`; the answer equals one host's, token for token, with greedy
sampling; nobody else reaches the rpc-server; a helper that dies mid-stream ends the spread everywhere.

Two hosts in network namespaces get hives by `rbee hive install`; the queen runs no local hive. The test
process is a third host: the LAN bridge's address, no hive of its own.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import pull_job
from tests.e2e.test_fleet_spreads import hive_url, join_token, set_budget
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import Lan, lan_hosts

MIB = 2**20

MODEL = "rbee-test/spreadrun-GGUF:Q4_K_M"
ASK = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(2, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


@pytest.fixture(scope="module")
def fleet(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    bounds = {"RBEE_SPREAD_MAX_RTT_MS": "10000", "RBEE_SPREAD_MIN_MBPS": "1"}  # shared cores: see test_fleet_spreads
    with FakeHub().start(lan.gateway) as hub:
        hub.add_repo(MODEL.split(":")[0], {"m-Q4_K_M.gguf": padded_tiny_model(tmp_path_factory.mktemp("m"))})
        with installed_fleet(lan, home, llama_server, {**hub.env(home), **bounds}) as queen:
            assert pull_job(queen, MODEL, "h1")[-1]["type"] == "done"
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


def spread_worker(fleet: Queen) -> tuple[dict[str, Any], str, str]:
    """The spread's worker, its main hive and its helper."""
    started = fleet.cli("worker", "start", MODEL, "--device", "h1:cpu+h2:cpu", timeout=300)
    assert started.returncode == 0 and "Traceback" not in started.stderr, started.stderr
    said = started.stdout + started.stderr
    assert "(rpc)" in said, said
    (worker,) = [w for w in fleet.workers() if w["model"] == MODEL and w["state"] == "ready"]
    main = str(worker["hive"])
    helper = "h2" if main == "h1" else "h1"
    assert f"{helper}:cpu 50% (rpc)" in said and f"{helper}:cpu" in worker["offload"], (said, worker)
    return dict(worker), main, helper


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
    _, main, helper = spread_worker(fleet)
    loaded = link_bytes(lan, helper) - before[helper]  # the helper's share of the weights came over the link
    try:
        lending, serving = report(lan, helper), report(lan, main)
        (lent,) = lending["rpc_servers"]
        assert lent["state"] == "ready" and [d["device"] for d in lent["devices"]] == ["cpu"]
        assert lent["devices"][0]["memory"] > 0
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


def test_a_helper_killed_mid_stream_ends_the_spread_everywhere(fleet: Queen, lan: Lan) -> None:
    """Last: it kills the helper's hive (its rpc-server dies with it). The spread the last test started serves."""
    (worker,) = [w for w in fleet.workers() if w["state"] == "ready"]
    main = str(worker["hive"])
    helper = "h2" if main == "h1" else "h1"
    pid = _hive_pid(lan, helper)
    events: list[str] = []
    with httpx.stream("POST", f"{fleet.url}/v1/completions", json={**ASK, "max_tokens": 4000, "stream": True,
                                                                    "ignore_eos": True}, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 2:
                    subprocess.run(["kill", "-9", str(pid)], check=True)
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
