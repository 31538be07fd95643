"""TLS between machines, for real: `rbee tls init`, then a hive installed over SSH in a network namespace
(tests/fixtures/lan.py) gets its certificate; the queen, the hive's API and its workers speak HTTPS, and
each side accepts only certificates from the cluster CA.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rbee.common import tls, tls_ca
from tests.conftest import Queen, free_port, queen_env
from tests.fixtures.lan import Lan, keeper_env, lan_hosts, model_every_host_reads
from tests.fixtures.tiny_gguf import write_tiny_model


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    with lan_hosts(1, tmp_path_factory.mktemp("lan")) as lan:
        yield lan


@pytest.fixture(scope="module")
def model_path() -> Iterator[str]:
    with model_every_host_reads(lambda path: write_tiny_model(path, name="tls-tiny"), "tls-tiny") as path:
        yield path


@pytest.fixture(scope="module")
def keeper(lan: Lan, tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> Iterator[Queen]:
    home = tmp_path_factory.mktemp("tls-keeper")
    port = free_port()
    queen = Queen(home, port, keeper_env(lan, home, queen_env(home, port, llama_server), llama_server))
    yield queen
    queen.cli("queen", "stop", timeout=60)


@pytest.fixture(scope="module")
def ca(keeper: Queen) -> Path:
    made = keeper.cli("tls", "init", check=True)
    assert "made the cluster CA" in made.stderr
    return keeper.home / "config" / "tls" / "ca.pem"


@pytest.fixture(scope="module")
def installed(keeper: Queen, ca: Path) -> Queen:
    result = keeper.cli("hive", "install", "h1", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "certificate from the cluster CA" in result.stderr
    return keeper


def pinned(ca: Path) -> ssl.SSLContext:
    return tls.client_context(ca)


def test_the_queen_speaks_https_with_a_certificate_from_the_cluster_ca(installed: Queen, ca: Path) -> None:
    url = f"https://127.0.0.1:{installed.port}"
    assert httpx.get(f"{url}/health", verify=pinned(ca)).json()["service"] == "rbee-queen"
    with pytest.raises(httpx.ConnectError):  # not a public CA: the system's roots do not vouch for it
        httpx.get(f"{url}/health")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{installed.port}/health", timeout=5)
    status = installed.cli("status", check=True)  # the CLI finds the CA by itself
    assert "h1" in status.stdout


def test_requests_reach_a_worker_over_https_and_plain_http_is_refused_everywhere(
    installed: Queen, ca: Path, model_path: str, lan: Lan
) -> None:
    url = f"https://127.0.0.1:{installed.port}"
    # The queen's settings for the model reach the remote hive that starts its worker.
    shape = httpx.put(f"{url}/v1/settings/models/tls-tiny", json={"slots": 3, "context": 128}, verify=pinned(ca))
    assert shape.status_code == 200, shape.text
    reply = httpx.post(f"{url}/v1/chat/completions", verify=pinned(ca), timeout=60,
                       headers={"x-rbee-hive": "h1"},
                       json={"model": model_path, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    workers = httpx.get(f"{url}/v1/workers", verify=pinned(ca)).json()
    worker_url = next(str(w["url"]) for w in workers if w["hive"] == "h1")
    assert [(w["slots"], w["context_size"]) for w in workers if w["hive"] == "h1"] == [(3, 128)]
    host = lan.hosts[0].address
    assert worker_url.startswith(f"https://{host}:")
    # The worker and the hive's API take TLS only, with a certificate the cluster CA signed for that address.
    assert httpx.post(f"{worker_url}/v1/chat/completions", json={}, verify=pinned(ca)).status_code == 401
    for target in (worker_url, f"http://{host}:7835"):
        plain = target.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/health", timeout=5)
    assert httpx.get(f"https://{host}:7835/v1/hive/report", verify=pinned(ca)).status_code == 401
    # Metrics: the hive's own (with its join token), and the queen's, which scrapes the remote worker over HTTPS.
    token = next(line.split('"')[1] for line in lan.run("h1", "cat", ".config/rbee/hive.toml").stdout.splitlines()
                 if line.startswith("token"))
    hive_metrics = httpx.get(f"https://{host}:7835/metrics", verify=pinned(ca),
                             headers={"Authorization": f"Bearer {token}"}).text
    assert 'rbee_workers{hive="h1",model="tls-tiny",state="ready"} 1.0' in hive_metrics
    assert "llamacpp:tokens_predicted_total{" in hive_metrics
    remote_id = next(str(w["id"]) for w in workers if w["hive"] == "h1")
    remote_log = installed.cli("logs", "worker", remote_id, "-n", "20", timeout=60)  # read over SSH
    assert remote_log.returncode == 0 and "llama" in remote_log.stdout.lower(), remote_log.stderr
    queen_metrics = httpx.get(f"{url}/metrics", verify=pinned(ca)).text
    assert 'hive="h1"' in queen_metrics and "llamacpp:prompt_tokens_total{" in queen_metrics


def test_a_hive_that_does_not_trust_the_queens_certificate_cannot_join(installed: Queen, lan: Lan) -> None:
    # Swap the hive's CA for another one: its heartbeats fail the TLS check and the queen marks it unreachable.
    other = Path(tempfile.mkdtemp(prefix="rbee-other-ca-"))
    try:
        tls_ca.ensure_ca(other)
        rogue = (other / "ca.pem").read_text()
    finally:
        shutil.rmtree(other, ignore_errors=True)
    ca_there = ".config/rbee/tls/ca.pem"
    original = lan.run("h1", "cat", ca_there).stdout
    lan.run("h1", "sh", "-c", f"cat > {ca_there}", input=rogue)
    try:
        assert lan.run("h1", ".local/share/rbee/venv/bin/rbee", "hive-agent", "restart").returncode == 0
        url = f"https://127.0.0.1:{installed.port}"
        ca_here = installed.home / "config" / "tls" / "ca.pem"
        state = None
        for _ in range(300):
            state = next(h for h in httpx.get(f"{url}/v1/hives", verify=pinned(ca_here)).json()
                         if h["alias"] == "h1")["state"]
            if state == "unreachable":
                break
            time.sleep(0.1)
        assert state == "unreachable"
        log = lan.run("h1", ".local/share/rbee/venv/bin/rbee", "hive-agent", "logs", "-n", "40").stdout
        assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log
    finally:
        lan.run("h1", "sh", "-c", f"cat > {ca_there}", input=original)
        lan.run("h1", ".local/share/rbee/venv/bin/rbee", "hive-agent", "restart")


def test_after_a_new_ca_rotate_mends_installed_hives_without_a_reinstall(
    installed: Queen, lan: Lan, model_path: str
) -> None:
    forced = installed.cli("tls", "init", "--force", check=True, timeout=120)
    assert "rbee tls rotate" in " ".join(forced.stderr.split())  # the console wraps long lines
    ca = installed.home / "config" / "tls" / "ca.pem"
    url = f"https://127.0.0.1:{installed.port}"

    def h1() -> dict[str, object]:
        return next(h for h in httpx.get(f"{url}/v1/hives", verify=pinned(ca)).json() if h["alias"] == "h1")

    # The hive still holds the old CA: it cannot register, and says why and what mends it.
    for _ in range(300):
        if h1()["state"] != "ready":
            break
        time.sleep(0.1)
    assert h1()["state"] != "ready"
    log = lan.run("h1", ".local/share/rbee/venv/bin/rbee", "hive-agent", "logs", "-n", "40").stdout
    assert "failed the TLS check" in log and "rbee tls rotate" in log
    rotated = installed.cli("tls", "rotate", timeout=300)
    assert rotated.returncode == 0, rotated.stderr
    assert "h1 has a certificate from the cluster CA" in rotated.stderr and "hive h1 is ready" in rotated.stderr
    assert lan.run("h1", "test", "-e", ".local/share/rbee/venv/bin/rbee").returncode == 0  # not reinstalled
    reply = httpx.post(f"{url}/v1/chat/completions", verify=pinned(ca), timeout=120, headers={"x-rbee-hive": "h1"},
                       json={"model": model_path, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text


def test_uninstall_deletes_the_hives_certificate_key(installed: Queen, lan: Lan) -> None:
    assert lan.run("h1", "test", "-f", ".config/rbee/tls/hive.key").returncode == 0
    result = installed.cli("hive", "uninstall", "h1", timeout=120)
    assert result.returncode == 0, result.stderr
    assert lan.run("h1", "test", "-e", ".config/rbee/tls/hive.key").returncode != 0
    assert lan.run("h1", "test", "-e", ".config/rbee/tls/hive.pem").returncode != 0
