"""Smoke test of the LAN fixture: two real hosts (netns + user + sshd) on a bridge, reachable over ssh."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.lan import Lan


@pytest.fixture(scope="module")
def hives_conf(lan: Lan) -> Path:
    return lan.write_hives_conf(lan.workdir / "hives.conf", extra={"h2": {"ServerAliveInterval": "5"}})


def ssh(hives_conf: Path, host: str, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-F", str(hives_conf), "-o", "BatchMode=yes", *options, host, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_hives_conf_has_one_block_per_host(lan: Lan, hives_conf: Path) -> None:
    text = hives_conf.read_text()
    assert "Host h1\n    HostName 10.231.0.11\n    User rbee-h1\n    Port 22\n" in text
    assert "Host h2\n    HostName 10.231.0.12\n    User rbee-h2\n" in text
    assert f"IdentityFile {lan.identity_file}" in text and f"UserKnownHostsFile {lan.known_hosts}" in text
    assert "    ServerAliveInterval 5\n" in text.split("Host h2")[1]


@pytest.mark.parametrize("name,user,address", [("h1", "rbee-h1", "10.231.0.11"), ("h2", "rbee-h2", "10.231.0.12")])
def test_ssh_logs_in_as_the_host_user(hives_conf: Path, name: str, user: str, address: str) -> None:
    out = ssh(hives_conf, name, "id -un; hostname -I; echo $HOME")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [user, address, f"/home/{user}"]


def test_hosts_reach_each_other_and_the_gateway(lan: Lan) -> None:
    h1, h2 = lan.hosts
    probe = subprocess.run(
        ["ip", "netns", "exec", h1.netns, "bash", "-c", f"timeout 3 bash -c 'echo > /dev/tcp/{h2.address}/22'"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    with socket.create_server((lan.gateway, 0)) as server:  # where a queen would listen
        port = server.getsockname()[1]
        server.settimeout(5)
        reach = lan.run(h1, "bash", "-c", f"echo hello-from-h1 > /dev/tcp/{lan.gateway}/{port}")
        conn, (peer, _) = server.accept()
        with conn:
            assert conn.recv(100) == b"hello-from-h1\n"
        assert reach.returncode == 0, reach.stderr
        assert peer == h1.address


def test_run_as_user_with_system_python_venv(lan: Lan) -> None:
    h1 = lan.hosts[0]
    who = lan.run(h1, "bash", "-c", "id -un; pwd; command -v python3")
    assert who.stdout.split() == [h1.user, str(h1.home), "/usr/bin/python3"], who.stderr
    made = lan.run(h1, "python3", "-m", "venv", "venv")
    assert made.returncode == 0, made.stderr
    assert (h1.home / "venv" / "bin" / "pip").exists()
    assert (h1.home / "venv").owner() == h1.user


def test_link_down_cuts_the_host_off_and_link_up_restores_it(lan: Lan, hives_conf: Path) -> None:
    h1 = lan.hosts[0]
    lan.link_down(h1)
    try:
        cut = ssh(hives_conf, "h1", "true", "-o", "ConnectTimeout=2")
        assert cut.returncode == 255, (cut.returncode, cut.stderr)
        assert "timed out" in cut.stderr or "unreachable" in cut.stderr.lower(), cut.stderr
    finally:
        lan.link_up(h1)
    back = ssh(hives_conf, "h1", "id -un", "-o", "ConnectTimeout=5")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == h1.user


def test_kill_user_processes(lan: Lan) -> None:
    h2 = lan.hosts[1]
    proc = lan.popen(h2, "sleep", "600")
    uid = pwd.getpwnam(h2.user).pw_uid
    deadline = time.monotonic() + 5
    while os.stat(f"/proc/{proc.pid}").st_uid != uid:  # ip netns exec and setpriv exec: same pid, then the user's
        assert time.monotonic() < deadline
        time.sleep(0.02)
    lan.kill_user_processes(h2)
    assert proc.wait(timeout=5) != 0
    assert lan.ssh(h2, "id -un").stdout.strip() == h2.user  # the sshd (root's) survives
