"""Many machines, for real: three hosts in network namespaces, each with its own address, Unix user
and OpenSSH sshd (tests/fixtures/lan.py). The keeper installs a hive on each over SSH, the queen
(which runs no local hive here) routes requests to their workers, and hosts are cut off and come back.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Queen, free_port, queen_env
from tests.fixtures.lan import Lan, keeper_env, lan_hosts, model_every_host_reads
from tests.fixtures.tiny_gguf import write_tiny_model

HEARTBEAT_MS = 300
TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(3, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


@pytest.fixture(scope="module")
def shared_model() -> Iterator[str]:
    with model_every_host_reads(lambda path: write_tiny_model(path, name="lan-tiny"), "lan-tiny") as path:
        yield path


@pytest.fixture(scope="module")
def keeper(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    """The keeper's environment (and its queen, which `rbee hive install` starts and restarts)."""
    home = tmp_path_factory.mktemp("keeper")
    port = free_port()
    queen = Queen(home, port, keeper_env(lan, home, queen_env(home, port, llama_server), llama_server,
                                         HEARTBEAT_MS, TIMEOUT_MS))
    yield queen
    queen.cli("queen", "stop", timeout=60)


def hives(queen: Queen) -> dict[str, dict[str, object]]:
    return {h["alias"]: h for h in httpx.get(f"{queen.url}/v1/hives", timeout=10).json()}


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def installed(keeper: Queen, lan: Lan) -> Queen:
    for host in lan.hosts:
        result = keeper.cli("hive", "install", host.name, timeout=600)
        assert result.returncode == 0, result.stderr
        assert f"hive {host.name} is ready at {host.address}:7835" in result.stderr
    return keeper


def chat(queen: Queen, model: str, hive: str | None = None) -> httpx.Response:
    headers = {"x-rbee-hive": hive} if hive else {}
    return httpx.post(f"{queen.url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def test_install_registers_every_hive(installed: Queen, lan: Lan) -> None:
    known = hives(installed)
    for host in lan.hosts:
        hive = known[host.name]
        assert hive["state"] == "ready" and hive["address"] == host.address and hive["port"] == 7835
        assert hive["version"] == "0.1.0" and hive["devices"][0]["id"] == "cpu"
    listing = installed.cli("hive", "list", check=True).stdout
    for host in lan.hosts:
        assert host.name in listing and host.address in listing
    engines = {h["alias"]: h["engine"] for h in httpx.get(f"{installed.url}/v1/status", timeout=10).json()["hives"]}
    for host in lan.hosts:  # the RPC server came with the engine, beside it
        engine = engines[host.name]
        assert engine["rpc"] == str(Path(engine["path"]).parent / "ggml-rpc-server"), engine


def test_install_again_repairs_without_reinstalling(installed: Queen, lan: Lan) -> None:
    result = installed.cli("hive", "install", "h1", timeout=300, check=True)
    assert "rbee 0.1.0 is already installed on h1" in result.stderr
    assert "llama-server is already on h1" in result.stderr
    assert hives(installed)["h1"]["state"] == "ready"


def test_pinned_and_unpinned_requests_run_on_remote_workers(installed: Queen, lan: Lan, shared_model: str) -> None:
    resp = chat(installed, shared_model, hive="h2")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rbee-hive"] == "h2"
    workers = [w for w in installed.workers() if w["hive"] == "h2"]
    assert workers and str(workers[0]["url"]).startswith("http://10.231.0.12:")
    # the worker answers nobody without its key, even on the LAN
    assert httpx.post(f"{workers[0]['url']}/v1/chat/completions", json={}, timeout=10).status_code == 401
    resp = chat(installed, "lan-tiny")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rbee-hive"] in ("h1", "h2", "h3")
    cli = installed.cli("infer", "-a", "h3", "-m", shared_model, "-p", "hello", "--max-tokens", "4", timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert any(w["hive"] == "h3" for w in installed.workers())


def worker_on(queen: Queen, hive: str) -> dict[str, object]:
    found = [w for w in queen.workers() if w["hive"] == hive and w["state"] == "ready"]
    assert found, f"no ready worker on {hive}: {queen.workers()}"
    return found[0]


def test_a_host_cut_off_is_unreachable_then_taken_back(installed: Queen, lan: Lan, shared_model: str) -> None:
    assert chat(installed, shared_model, hive="h2").status_code == 200
    before = worker_on(installed, "h2")
    lan.link_down("h2")
    try:
        wait_for(lambda: hives(installed)["h2"]["state"] == "unreachable", what="h2 unreachable")
        pinned = chat(installed, shared_model, hive="h2")
        assert pinned.status_code == 503 and "unreachable" in pinned.json()["error"]["message"]
        for _ in range(3):
            resp = chat(installed, "lan-tiny")
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-rbee-hive"] in ("h1", "h3")
    finally:
        lan.link_up("h2")
    wait_for(lambda: hives(installed)["h2"]["state"] == "ready", what="h2 back")
    after = worker_on(installed, "h2")
    assert after["id"] == before["id"] and after["url"] == before["url"]  # the same worker, not a new one
    assert chat(installed, shared_model, hive="h2").headers["x-rbee-hive"] == "h2"


def test_a_killed_hive_is_unreachable_until_started_again(installed: Queen, lan: Lan, shared_model: str) -> None:
    lan.kill_user_processes("h3")
    wait_for(lambda: hives(installed)["h3"]["state"] == "unreachable", what="h3 unreachable")
    resp = chat(installed, "lan-tiny")
    assert resp.status_code == 200 and resp.headers["x-rbee-hive"] != "h3"
    started = installed.cli("hive", "start", "h3", timeout=120)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: hives(installed)["h3"]["state"] == "ready", what="h3 back")
    assert chat(installed, shared_model, hive="h3").headers["x-rbee-hive"] == "h3"


def test_a_restarted_queen_adopts_the_running_remote_workers(installed: Queen, lan: Lan, shared_model: str) -> None:
    assert chat(installed, shared_model, hive="h1").status_code == 200
    before = {w["id"]: w["url"] for w in installed.workers() if w["state"] == "ready"}
    installed.cli("queen", "stop", check=True, timeout=60)
    installed.cli("queen", "start", check=True, timeout=60)
    wait_for(lambda: all(h["state"] == "ready" for h in hives(installed).values()), what="hives re-registered")
    after = {w["id"]: w["url"] for w in installed.workers() if w["state"] == "ready"}
    assert after == before  # adopted, not respawned
    resp = chat(installed, shared_model, hive="h1")
    assert resp.status_code == 200 and resp.headers["x-rbee-worker"] in before


def test_a_wrong_join_token_is_refused_and_logged_on_both_sides(installed: Queen, lan: Lan) -> None:
    config = lan.host("h1").home / ".config" / "rbee" / "hive.toml"
    good = config.read_text()
    config.write_text("\n".join('token = "forged"' if line.startswith("token") else line
                                for line in good.splitlines()) + "\n")
    installed.cli("hive", "restart", "h1", check=True, timeout=120)
    queen_log = Path(installed.env["RBEE_HOME"]) / "state" / "queen.log"
    wait_for(lambda: "refused hive 'h1' from 10.231.0.11: unknown or revoked join token" in queen_log.read_text(),
             what="the queen's refusal in its log")
    hive_log = lan.host("h1").home / ".local" / "state" / "rbee" / "hive.log"
    wait_for(lambda: "refused this hive" in hive_log.read_text(), what="the hive's refusal in its log")
    wait_for(lambda: hives(installed)["h1"]["state"] == "unreachable", what="h1 unreachable")
    repaired = installed.cli("hive", "install", "h1", timeout=300)  # a new token, and the hive is back
    assert repaired.returncode == 0, repaired.stderr
    assert hives(installed)["h1"]["state"] == "ready"


def test_a_taken_hive_port_is_reported(installed: Queen, lan: Lan) -> None:
    installed.cli("hive", "stop", "h2", check=True, timeout=120)
    squatter = lan.popen("h2", "/usr/bin/python3", "-m", "http.server", "--bind", "10.231.0.12", "7835")
    try:
        wait_for(lambda: lan.run("h2", "bash", "-c", "echo > /dev/tcp/10.231.0.12/7835").returncode == 0,
                 what="the squatter listening")
        result = installed.cli("hive", "start", "h2", timeout=120)
        assert result.returncode != 0
        assert "port 7835 is taken by another program" in result.stderr
    finally:
        squatter.kill()
        squatter.wait()
    installed.cli("hive", "start", "h2", check=True, timeout=120)
    wait_for(lambda: hives(installed)["h2"]["state"] == "ready", what="h2 back")


def test_unknown_alias_lists_the_known_ones(installed: Queen) -> None:
    result = installed.cli("hive", "install", "nope")
    assert result.returncode == 1
    assert "No host 'nope'" in result.stderr and "h1, h2, h3" in result.stderr
    assert "Traceback" not in result.stderr


def test_ssh_authentication_failure_names_host_and_key(installed: Queen, lan: Lan, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    conf = Path(installed.env["RBEE_HIVES_CONF"]).read_text().replace(str(lan.identity_file), str(stranger))
    (tmp_path / "hives.conf").write_text(conf)
    result = installed.cli("hive", "install", "h1", env={"RBEE_HIVES_CONF": str(tmp_path / "hives.conf")})
    assert result.returncode == 1
    assert "rbee-h1@10.231.0.11:22" in result.stderr and str(stranger) in result.stderr
    assert "Traceback" not in result.stderr


def test_version_skew_is_reported_with_the_fix(installed: Queen) -> None:
    token = httpx.post(f"{installed.url}/v1/hives", json={"alias": "skewed"}, timeout=10).json()["token"]
    report = {"alias": "skewed", "version": "0.0.9", "address": "127.0.0.1", "port": 7835,  # where it sends from
              "engine": {"path": None}, "devices": [], "memory_total": 1}
    bad = httpx.post(f"{installed.url}/v1/hives/register", json=report, timeout=10,
                     headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    ack = httpx.post(f"{installed.url}/v1/hives/register", json=report, timeout=10,
                     headers={"Authorization": f"Bearer {token}"}).json()
    assert "rbee hive upgrade skewed" in ack["message"]
    assert "rbee hive upgrade skewed" in installed.cli("hive", "list").stderr
    assert httpx.delete(f"{installed.url}/v1/hives/skewed", timeout=10).status_code == 200
    assert "skewed" not in hives(installed)


def test_upgrade_reinstalls_and_the_hive_rejoins(installed: Queen, lan: Lan) -> None:
    result = installed.cli("hive", "upgrade", "h1", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "rbee 0.1.0 installed on h1" in result.stderr and "hive h1 is ready" in result.stderr
    assert installed.cli("hive", "upgrade").returncode == 1  # neither an alias nor --all


def test_install_waits_for_the_new_process_not_the_one_it_replaced(installed: Queen, lan: Lan) -> None:
    assert hives(installed)["h2"]["state"] == "ready"  # the old process is registered
    nowhere = installed.cli("hive", "install", "h2", "--queen-url", "http://10.231.0.1:9", timeout=300,
                            env={"RBEE_HIVE_REGISTER_TIMEOUT_S": "6"})
    assert nowhere.returncode == 1, nowhere.stderr
    assert "did not register with the queen within 6 s" in nowhere.stderr and "is ready" not in nowhere.stderr
    mended = installed.cli("hive", "install", "h2", timeout=300)
    assert mended.returncode == 0 and "hive h2 is ready" in mended.stderr, mended.stderr


def test_logs_then_uninstall_removes_the_hive_and_revokes_its_token(installed: Queen, lan: Lan) -> None:
    logs = installed.cli("hive", "logs", "h3", "-n", "200", timeout=120)
    assert logs.returncode == 0, logs.stderr
    assert "registered with the queen" in logs.stdout  # a log is the result: on stdout
    result = installed.cli("hive", "uninstall", "h3", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "h3" not in hives(installed)
    assert lan.run("h3", "test", "-e", ".local/share/rbee/venv").returncode != 0
    assert lan.run("h3", "test", "-e", ".config/rbee/hive.toml").returncode != 0
    assert chat(installed, "lan-tiny", hive="h3").json()["error"]["code"] == "hive_not_found"


def test_from_the_network_the_queen_answers_only_hives_with_a_token(installed: Queen, lan: Lan) -> None:
    port = installed.port
    script = f"""
import json, socket, urllib.request, urllib.error
def huge(path):  # says it will send 10 MB, sends nothing: the answer must come before the body
    with socket.create_connection(("10.231.0.1", {port}), timeout=10) as s:
        s.sendall(f"POST {{path}} HTTP/1.1\\r\\nHost: q\\r\\nContent-Length: 10000000\\r\\n\\r\\n".encode())
        return int(s.recv(100).split()[1])
def ask(path, data=None, headers={{}}):
    req = urllib.request.Request("http://10.231.0.1:{port}" + path, data=data, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
print(json.dumps([ask("/v1/status"), ask("/v1/models"), huge("/v1/hives/register"),
                  ask("/v1/hives/heartbeat", b"{{}}", {{"Content-Type": "application/json"}})]))
"""
    result = lan.run("h1", "/usr/bin/python3", "-c", script)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [403, 403, 413, 401]
