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

from tests.conftest import Queen, wait_for
from tests.e2e.test_fleet_catalog import pull_job
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.fleet import installed_fleet, padded_tiny_model
from tests.fixtures.lan import Host, Lan, lan_hosts

MIB = 2**20
MODEL = "rbee-test/spread-GGUF:Q4_K_M"


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(2, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


@pytest.fixture(scope="module")
def hub(lan: Lan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    with FakeHub().start(lan.gateway) as hub:
        hub.add_repo(MODEL.split(":")[0], {"m-Q4_K_M.gguf": padded_tiny_model(tmp_path_factory.mktemp("spread"))})
        yield hub


@pytest.fixture(scope="module")
def fleet(lan: Lan, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("keeper")
    # round trips here go through two Python HTTP stacks on cores other tests share (7-10 ms measured under
    # load): the bound is the test's, so that a plan does not depend on an idle machine
    bounds = {"RBEE_SPREAD_MAX_RTT_MS": "10000", "RBEE_SPREAD_MIN_MBPS": "1"}
    with installed_fleet(lan, home, llama_server, {**hub.env(home), **bounds}) as queen:
        assert pull_job(queen, MODEL, "h1")[-1]["type"] == "done"
        yield queen


def join_token(host: Host) -> str:
    config = tomllib.loads((host.home / ".config" / "rbee" / "hive.toml").read_text())
    return str(config["token"])


def hive_url(host: Host) -> str:
    return f"http://{host.address}:7835"


def open_echo(on: Host, peer: Host) -> dict[str, str]:
    """An echo on `on` for `peer`'s address, opened as the queen does (with `on`'s join token)."""
    resp = httpx.post(f"{hive_url(on)}/v1/hive/links/echoes", json={"peer_address": peer.address},
                      headers={"Authorization": f"Bearer {join_token(on)}"}, timeout=10)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


ECHO_SCRIPT = """
import json, sys, urllib.request, urllib.error
url, token, tries, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
codes = []
for i in range(tries):
    body = b"\\0" * size if i == 0 else b""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Authorization": "Bearer " + token, "X-Rbee-Nonce": "n1"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            codes.append([resp.status, resp.headers.get("X-Rbee-Proof", ""), json.loads(resp.read())])
    except urllib.error.HTTPError as exc:
        codes.append([exc.code, "", json.loads(exc.read())])
print(json.dumps(codes))
"""


DECLARE_SCRIPT = """
import socket, sys
host, port, path, token, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
with socket.create_connection((host, port), timeout=10) as sock:
    sock.sendall(f"POST {path} HTTP/1.1\\r\\nHost: {host}\\r\\nAuthorization: Bearer {token}\\r\\n"
                 f"Content-Length: {size}\\r\\n\\r\\n".encode())
    print(sock.recv(65536).decode().split("\\r\\n")[0])
"""


def echo_from(lan: Lan, host: Host, url: str, token: str, tries: int = 1, size: int = 0) -> list[list[Any]]:
    """POST to an echo from inside `host` (its address, its user), `tries` times; [status, proof, body] each."""
    done = lan.run(host, "python3", "-c", ECHO_SCRIPT, url, token, str(tries), str(size), timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_the_queen_measures_the_link_between_two_hives(fleet: Queen) -> None:
    shown = fleet.cli("status", "--links", timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "h1" in shown.stdout and "h2" in shown.stdout and " ms" in shown.stdout
    [link] = httpx.get(f"{fleet.url}/v1/links", timeout=10).json()["links"]
    assert {link["source"], link["peer"]} == {"h1", "h2"}
    assert 0 < link["rtt_ms_median"] <= link["rtt_ms_p90"] < 1000
    assert link["mbps"] > 1 and link["bulk_bytes"] == 4 * MIB and link["rounds"] == 10
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
    guessed = f"{hive_url(h2)}/v1/hive/links/echo/echo-0123456789abcdef"
    for headers in ({}, {"Authorization": "Bearer guessed-token-guessed-token"}):
        assert httpx.post(guessed, headers=headers, timeout=10).status_code == 401
    echo = open_echo(h2, h1)
    url = f"{hive_url(h2)}/v1/hive/links/echo/{echo['echo_id']}"
    # the right token, from another address (the test process): refused
    stolen = httpx.post(url, headers={"Authorization": f"Bearer {echo['token']}"}, timeout=10)
    assert stolen.status_code == 403, stolen.text
    # a wrong token from the right address: refused
    [[status, _, _]] = echo_from(lan, h1, url, "wrong-token")
    assert status == 401
    # the hive it was opened for: answered, with the proof of the token
    [[status, proof, body]] = echo_from(lan, h1, url, echo["token"], size=1000)
    assert status == 200 and body == {"received": 1000} and len(proof) == 64
    # the join token does not open an echo, nor an echo's token the hive's other routes
    assert httpx.post(url, headers={"Authorization": f"Bearer {join_token(h2)}"}, timeout=10).status_code == 401
    report = httpx.get(f"{hive_url(h2)}/v1/hive/report", headers={"Authorization": f"Bearer {echo['token']}"},
                       timeout=10)
    assert report.status_code == 401


def test_an_echo_is_bounded_in_size_and_uses(fleet: Queen, lan: Lan) -> None:
    h1, h2 = lan.host("h1"), lan.host("h2")
    echo = open_echo(h2, h1)
    url = f"{hive_url(h2)}/v1/hive/links/echo/{echo['echo_id']}"
    # a body declared larger than 16 MiB is refused before one byte of it is read
    declared = lan.run(h1, "python3", "-c", DECLARE_SCRIPT, h2.address, "7835",
                       f"/v1/hive/links/echo/{echo['echo_id']}", echo["token"], str(16 * MIB + 1), timeout=60)
    assert declared.returncode == 0 and declared.stdout.startswith("HTTP/1.1 413"), (declared.stdout,
                                                                                     declared.stderr)
    answers = echo_from(lan, h1, url, echo["token"], tries=60)
    codes = [a[0] for a in answers]
    assert codes[:51] == [200] * 51 and set(codes[51:]) == {401}, codes  # 52 uses in all, one spent above


@pytest.mark.parametrize("target", ["queen", "sshd", "closed", "wrong-token"])
def test_a_measure_cannot_be_turned_into_a_port_scanner(fleet: Queen, lan: Lan, target: str) -> None:
    """Whoever holds h1's join token asks h1 to measure against what is no hive (or with a wrong token): one
    request goes out, and the answer is the same sentence whatever was there."""
    h1, h2 = lan.host("h1"), lan.host("h2")
    echo = open_echo(h2, h1)
    urls = {"queen": f"http://{lan.gateway}:{fleet.port}", "sshd": f"http://{h2.address}:22",
            "closed": f"http://{h2.address}:9", "wrong-token": hive_url(h2)}
    token = "not-the-echo-token" if target == "wrong-token" else echo["token"]
    resp = httpx.post(f"{hive_url(h1)}/v1/hive/links/measure", timeout=60,
                      headers={"Authorization": f"Bearer {join_token(h1)}"},
                      json={"peer": "h2", "peer_url": urls[target], "echo_id": echo["echo_id"], "token": token})
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["message"] == \
        f"hive 'h2' at {urls[target]} did not answer as the hive the queen named"


@pytest.mark.parametrize("peer_url", ["http://localhost:7835", "http://h2.example:7835", "file:///etc/passwd",
                                      "http://10.0.0.1:7835/v1/hive/report?x=", "http://10.0.0.1"])
def test_a_measure_takes_address_literals_only(fleet: Queen, lan: Lan, peer_url: str) -> None:
    h1 = lan.host("h1")
    resp = httpx.post(f"{hive_url(h1)}/v1/hive/links/measure", timeout=30,
                      headers={"Authorization": f"Bearer {join_token(h1)}"},
                      json={"peer": "h2", "peer_url": peer_url, "echo_id": "echo-0123456789abcdef", "token": "t"})
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
