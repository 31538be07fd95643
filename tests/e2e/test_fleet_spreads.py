"""Spreads across hives, as far as they go without carrying one out: links measured between two real hives
(rbee/hive/links.py, rbee/queen/links.py), the plan (rbee/queen/spread_plan.py) through `rbee worker start
--dry-run`, the pin in `rbee model set --spread`, and what a stranger or a hostile token holder gets.

Two hosts in network namespaces get hives by `rbee hive install`; the queen runs no local hive. The test
process is a third host: the LAN bridge's address, no hive of its own.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee.contracts.spread_plans import MAX_ROUNDS
from rbee.hive.links import HELLO, proof
from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import pull_job
from tests.fixtures import echo_talk
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import Host, Lan

MIB = 2**20
MODEL = "rbee-test/spread-GGUF:Q4_K_M"


@pytest.fixture(scope="module")
def hub(lan: Lan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    with FakeHub().start(lan.gateway) as hub:
        hub.add_repo(MODEL.split(":")[0], {"m-Q4_K_M.gguf": padded_tiny_model(tmp_path_factory.mktemp("spread"))})
        yield hub


@pytest.fixture(scope="module")
def fleet(lan: Lan, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    with installed_fleet(lan, home, llama_server, hub.env(home)) as queen:  # the default link bounds
        assert pull_job(queen, MODEL, "h1")[-1]["type"] == "done"
        yield queen


def join_token(host: Host) -> str:
    config = tomllib.loads((host.home / ".config" / "rbee" / "hive.toml").read_text())
    return str(config["token"])


def hive_url(host: Host) -> str:
    return f"http://{host.address}:7835"


def open_echo(on: Host, peer: Host) -> dict[str, Any]:
    """An echo on `on` for `peer`'s address, opened as the queen does (with `on`'s join token)."""
    resp = httpx.post(f"{hive_url(on)}/v1/hive/links/echoes", json={"peer_address": peer.address},
                      headers={"Authorization": f"Bearer {join_token(on)}"}, timeout=10)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def echo_from(lan: Lan, host: Host | None, to: Host, echo: dict[str, Any], sent: bytes) -> bytes:
    """Send `sent` to `echo` on `to` as a measure talks (tests/fixtures/echo_talk.py) from inside `host` (its
    address, its user; None: this process, the LAN's third host): what the echo wrote until it closed."""
    if host is None:
        return echo_talk.talk(to.address, echo["port"], sent)
    done = lan.run(host, "python3", "-c", Path(echo_talk.__file__).read_text(), to.address, str(echo["port"]),
                   sent.hex(), timeout=60)
    assert done.returncode == 0, done.stderr
    return bytes.fromhex(done.stdout.strip())


def hello(token: str) -> bytes:
    return HELLO + f" {token} n1\n".encode()


def test_the_queen_measures_the_link_between_two_hives(fleet: Queen) -> None:
    shown = fleet.cli("status", "--links", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "h1" in shown.stdout and "h2" in shown.stdout and " ms" in shown.stdout
    [link] = httpx.get(f"{fleet.url}/v1/links", timeout=10).json()["links"]
    assert {link["source"], link["peer"]} == {"h1", "h2"}
    assert 0 < link["rtt_ms_median"] <= link["rtt_ms_p90"] < 1000
    assert link["mbps"] > 1 and link["bulk_bytes"] == 4 * MIB and link["rounds"] == 50
    print(f"\n{shown.stdout}")
    again = httpx.post(f"{fleet.url}/v1/links/measure", json={"a": "h2", "b": "h1"}, timeout=120)
    assert again.status_code == 200, again.text
    assert {(m["source"], m["peer"]) for m in again.json()["links"]} == {("h1", "h2"), ("h2", "h1")}


@pytest.mark.parametrize(("body", "message"), [
    ({"a": "h1"}, "Name both hives of a link"),
    ({"a": "h1", "b": "h1"}, "both are 'h1'"),
    ({"a": "h1", "b": "nope"}, "There is no hive 'nope'"),
    ({"a": "h1", "b": "../x"}, "Invalid value for 'b'"),
])
def test_a_bad_link_request_is_explained(fleet: Queen, body: dict[str, str], message: str) -> None:
    resp = httpx.post(f"{fleet.url}/v1/links/measure", json=body, timeout=30)
    assert resp.status_code in (400, 404), resp.text
    assert message in resp.json()["error"]["message"]


def test_a_model_that_fits_one_hive_is_not_spread(fleet: Queen) -> None:
    shown = fleet.cli("worker", "start", MODEL, "--dry-run", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "not spread" in shown.stdout and "fits hive" in shown.stdout
    assert not fleet.workers()


def test_a_forced_spread_dry_run_prints_the_plan(fleet: Queen) -> None:
    shown = fleet.cli("worker", "start", MODEL, "--device", "h1:cpu+h2:cpu", "--dry-run", timeout=120)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "forced spread over h1:cpu+h2:cpu" in out and "helper (rpc)" in out and "--tensor-split" in out
    assert "link h1 - h2" in out or "link h2 - h1" in out
    plan = json.loads(fleet.cli("worker", "start", MODEL, "--device", "h1:cpu+h2:cpu", "--dry-run", "--json",
                                check=True, timeout=120).stdout)
    assert plan["spread"] and plan["main"] in ("h1", "h2") and len(plan["helpers"]) == 1
    [helper] = [d for d in plan["devices"] if d["rpc"]]
    [main_cpu] = [d for d in plan["devices"] if not d["rpc"]]
    assert helper["order"] == 0 and main_cpu["order"] is None and plan["tensor_split"] == [helper["share"]]
    assert helper["share"] + main_cpu["share"] == pytest.approx(1.0, abs=1e-3)
    assert not fleet.workers()


@pytest.mark.parametrize(("body", "message"), [
    ({"kind": "model.pull", "device": "h1:cpu+h2:cpu"}, "a pull goes to one hive"),
    ({"kind": "worker.spawn", "device": "h1:cpu+h1:cpu"}, "is named twice"),
    ({"kind": "worker.spawn", "device": "h1:cpu+nope"}, "is not HIVE:DEVICE"),
])
def test_a_spread_job_that_cannot_mean_anything_is_refused(fleet: Queen, body: dict[str, str], message: str) -> None:
    """(Starting a spread: tests/e2e/test_fleet_spread_run.py.)"""
    job = httpx.post(f"{fleet.url}/v1/jobs", json={"model": MODEL, **body}, timeout=10)
    assert job.status_code == 400 and message in job.json()["error"]["message"], job.text
    assert not fleet.workers()


@pytest.mark.parametrize(("device", "message"), [
    ("h1:cpu+h9:cpu", "no ready hive 'h9' (ready hives: h1, h2)"),
    ("h1:cpu+h2:cuda3", "hive 'h2' has no device 'cuda3' (it has: cpu)"),
    ("h1:cpu+h1:cpu", "h1:cpu is named twice"),
    ("h1:cpu", "names one device"),
    ("h1:cpu+h2", "is not HIVE:DEVICE"),
])
def test_a_bad_forced_spread_is_explained(fleet: Queen, device: str, message: str) -> None:
    shown = fleet.cli("worker", "start", MODEL, "--device", device, "--dry-run", timeout=120)
    assert shown.returncode == 1, shown.stdout
    assert message in shown.stderr and "Traceback" not in shown.stderr


def test_a_pinned_spread_is_honoured_by_the_plan(fleet: Queen) -> None:
    refused = fleet.cli("model", "set", MODEL, "--spread", "h1:cpu+h1:cpu", timeout=60)
    assert refused.returncode == 1 and "named twice" in refused.stderr and "Traceback" not in refused.stderr
    try:
        fleet.cli("model", "set", MODEL, "--spread", "h2:CPU+h1:cpu", check=True, timeout=60)
        assert httpx.get(f"{fleet.url}/v1/settings/models/{MODEL}", timeout=10).json()["spread"] == "h2:cpu+h1:cpu"
        shown = fleet.cli("worker", "start", MODEL, "--dry-run", timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "forced spread over h2:cpu+h1:cpu" in shown.stdout
    finally:
        fleet.cli("model", "set", MODEL, "--unset", "spread", check=True, timeout=60)
    assert "spread" not in httpx.get(f"{fleet.url}/v1/settings/models/{MODEL}", timeout=10).json()


def test_a_stranger_gets_nothing_from_an_echo(fleet: Queen, lan: Lan) -> None:
    h1, h2 = lan.host("h1"), lan.host("h2")
    guessed = f"{hive_url(h2)}/v1/hive/links/echo/echo-0123456789abcdef"  # no HTTP echo: the join token's wall
    assert httpx.post(guessed, headers={"Authorization": "Bearer guessed-token-guessed"}, timeout=10).status_code == 401
    echo = open_echo(h2, h1)
    # the right token, from another address (the test process): closed before a byte is read
    assert echo_from(lan, None, h2, echo, hello(echo["token"]) + b"p") == b""
    # from the right address: no token, a wrong one, h2's join token, h1's own join token, HTTP: nothing
    for sent in (HELLO + b"\n", hello("wrong-token"), hello(join_token(h2)), hello(join_token(h1)),
                 b"POST /v1/hive/report HTTP/1.1\r\nHost: h2\r\n\r\n"):
        echo = open_echo(h2, h1)  # (an echo takes three connections)
        assert echo_from(lan, h1, h2, echo, sent) == b"", sent
    # the hive it was opened for: answered, with the proof of the token, and its round trips
    said = echo_from(lan, h1, h2, echo, hello(echo["token"]) + b"pp")
    assert said == proof(echo["token"], "n1").encode() + b"\npp"
    # nor does an echo's token open the hive's routes
    report = httpx.get(f"{hive_url(h2)}/v1/hive/report", headers={"Authorization": f"Bearer {echo['token']}"},
                       timeout=10)
    assert report.status_code == 401


def test_an_echo_is_bounded_in_size_and_rounds(fleet: Queen, lan: Lan) -> None:
    h1, h2 = lan.host("h1"), lan.host("h2")
    echo = open_echo(h2, h1)
    said = proof(echo["token"], "n1").encode() + b"\n"
    # a bulk transfer declared larger than 16 MiB is refused before one byte of it is read
    oversize = hello(echo["token"]) + b"b" + (16 * MIB + 1).to_bytes(4, "big") + bytes(1000)
    assert echo_from(lan, h1, h2, echo, oversize) == said
    # no more round trips than a measure takes
    assert echo_from(lan, h1, h2, echo, hello(echo["token"]) + b"p" * (MAX_ROUNDS + 5)) == said + b"p" * MAX_ROUNDS


@pytest.mark.parametrize("target", ["queen", "sshd", "closed", "wrong-token"])
def test_a_measure_cannot_be_turned_into_a_port_scanner(fleet: Queen, lan: Lan, target: str) -> None:
    """Whoever holds h1's join token asks h1 to measure against what is no hive (or with a wrong token): one
    request goes out, and the answer is the same sentence whatever was there."""
    h1, h2 = lan.host("h1"), lan.host("h2")
    echo = open_echo(h2, h1)
    where = {"queen": (lan.gateway, fleet.port), "sshd": (h2.address, 22), "closed": (h2.address, 9),
             "wrong-token": (h2.address, echo["port"])}
    host, port = where[target]
    token = "not-the-echo-token" if target == "wrong-token" else echo["token"]
    resp = httpx.post(f"{hive_url(h1)}/v1/hive/links/measure", timeout=60,
                      headers={"Authorization": f"Bearer {join_token(h1)}"},
                      json={"peer": "h2", "peer_url": f"http://{host}:7835", "echo_id": echo["echo_id"],
                            "echo_port": port, "token": token})
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["message"] == f"hive 'h2' at {host} port {port} did not answer as the hive the " \
        "queen named"


@pytest.mark.parametrize("peer_url", ["http://localhost:7835", "http://h2.example:7835", "file:///etc/passwd",
                                      "http://10.0.0.1:7835/v1/hive/report?x=", "http://10.0.0.1"])
def test_a_measure_takes_address_literals_only(fleet: Queen, lan: Lan, peer_url: str) -> None:
    h1 = lan.host("h1")
    resp = httpx.post(f"{hive_url(h1)}/v1/hive/links/measure", timeout=30,
                      headers={"Authorization": f"Bearer {join_token(h1)}"},
                      json={"peer": "h2", "peer_url": peer_url, "echo_id": "echo-0123456789abcdef", "echo_port": 1,
                            "token": "t"})
    assert resp.status_code == 400 and "peer_url" in resp.json()["error"]["message"], resp.text


CALL_SCRIPT = """
import sys, urllib.request, urllib.error
method, url, token = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, data=b"{}" if method == "POST" else None, method=method,
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(resp.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_a_hive_token_does_not_reach_the_queens_link_routes(fleet: Queen, lan: Lan) -> None:
    """A hive (h2, from its own address, with its valid join token) cannot make the queen measure or plan."""
    h2 = lan.host("h2")
    for method, path in (("POST", "/v1/links/measure"), ("GET", "/v1/links"), ("POST", "/v1/spreads/plan")):
        done = lan.run(h2, "python3", "-c", CALL_SCRIPT, method, f"http://{lan.gateway}:{fleet.port}{path}",
                       join_token(h2), timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() in ("401", "403"), (path, done.stdout)


def set_budget(fleet: Queen, host: Host, budget: str) -> None:
    config = host.home / ".config" / "rbee" / "hive.toml"
    lines = [line for line in config.read_text().splitlines() if not line.startswith("memory_budget")]
    config.write_text("\n".join([*lines, f'memory_budget = "{budget}"']) + "\n")
    fleet.cli("hive", "restart", host.name, check=True, timeout=120)

    def ready() -> bool:
        return any(h["alias"] == host.name and h["state"] == "ready"
                   for h in httpx.get(f"{fleet.url}/v1/hives", timeout=10).json())
    assert wait_for(ready, 60), f"{host.name} did not come back"


def test_a_model_no_hive_holds_is_planned_over_both(fleet: Queen, lan: Lan) -> None:
    """Last: it shrinks both hives. Each gets 80 % of the model's need; together they hold it."""
    fleet.cli("model", "set", MODEL, "--ctx", "65536", "--slots", "1", check=True, timeout=60)
    need = int(httpx.post(f"{fleet.url}/v1/spreads/plan", json={"model": MODEL}, timeout=120).json()["need"])
    for host in ("h1", "h2"):
        set_budget(fleet, lan.host(host), f"{need * 4 // 5 // MIB}MiB")
    plan = httpx.post(f"{fleet.url}/v1/spreads/plan", json={"model": MODEL}, timeout=120).json()
    assert plan["spread"], plan["reason"]
    assert plan["need"] == need and sorted([plan["main"], *plan["helpers"]]) == ["h1", "h2"]
    assert "more than any one hive has" in plan["reason"]
    shares = {d["hive"]: d["share"] for d in plan["devices"]}
    assert shares[plan["main"]] > shares[plan["helpers"][0]]  # the helper's device holds a runtime more
