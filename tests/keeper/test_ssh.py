"""The SSH runner: the ssh command line, OpenSSH's errors turned into advice, and commands actually run.

Commands run three ways: against a closed local port with the real `ssh` (always), through a stand-in `ssh`
that runs the command with the local sh (always), and against a private sshd started here (skipped where
there is no sshd)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.keeper.hives_conf import HostConfig
from rbee.keeper.ssh import SSH, RemoteCommandFailed, Result, SSHError, control_dir, explain
from tests.conftest import free_port

H1 = HostConfig("h1", hostname="10.0.0.5", user="rbee-h1", port=22)
H1_KEY = HostConfig("h1", hostname="10.0.0.5", user="rbee-h1", port=2222, identity_file="/home/me/.ssh/rbee")


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short, private folder for ControlMaster sockets (pytest's tmp_path is too long for a socket path)."""
    folder = Path(tempfile.mkdtemp(prefix="rbee-t-", dir="/tmp"))
    monkeypatch.setenv("RBEE_SSH_CONTROL_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- the command line -----------------------------------------------------------------------------------------


def test_argv_for_a_full_host(control: Path) -> None:
    host = HostConfig("h1", hostname="10.0.0.5", user="rbee-h1", port=2222, identity_file="/k/id",
                      ssh_options=(("ServerAliveInterval", "30"), ("ProxyJump", "bastion")))
    assert SSH(host, connect_timeout=5).argv("uname -a") == [
        "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        "-o", "ControlMaster=auto", "-o", f"ControlPath={control}/ssh-%C", "-o", "ControlPersist=60",
        "-p", "2222", "-i", "/k/id", "-l", "rbee-h1",
        "-o", "ServerAliveInterval=30", "-o", "ProxyJump=bastion",
        "--", "10.0.0.5", "uname -a",
    ]


def test_argv_for_an_ssh_config_alias_leaves_everything_to_ssh(control: Path) -> None:
    argv = SSH(HostConfig("gaming-pc", source="~/.ssh/config")).argv()
    assert argv[-2:] == ["--", "gaming-pc"]
    assert not {"-p", "-i", "-l"} & set(argv)
    assert "ConnectTimeout=10" in argv


def test_the_users_own_options_replace_ours(control: Path) -> None:
    host = HostConfig("h1", ssh_options=(("controlmaster", "no"), ("ConnectTimeout", "3")))
    argv = SSH(host).argv("true")
    assert not any(arg.startswith(("ControlPath=", "ControlPersist=", "ControlMaster=")) for arg in argv)
    assert "ConnectTimeout=10" not in argv and "ConnectTimeout=3" in argv
    assert argv[1:3] == ["-o", "BatchMode=yes"]  # first value wins in ssh, so nothing can turn prompts back on


def test_control_dir_is_private(control: Path) -> None:
    control.chmod(0o755)
    assert control_dir() == control
    assert stat.S_IMODE(control.stat().st_mode) == 0o700


def test_control_dir_is_created(control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_SSH_CONTROL_DIR", str(control / "new"))
    assert control_dir() == control / "new"
    assert stat.S_IMODE((control / "new").stat().st_mode) == 0o700


def test_no_multiplexing_through_a_symlink_or_a_long_path(control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (control / "link").symlink_to(control)
    monkeypatch.setenv("RBEE_SSH_CONTROL_DIR", str(control / "link"))
    assert control_dir() is None
    assert not any(arg.startswith("ControlPath=") for arg in SSH(H1).argv("true"))
    monkeypatch.setenv("RBEE_SSH_CONTROL_DIR", str(control / ("x" * 60)))
    assert control_dir() is None


# -- OpenSSH's messages, as OpenSSH 9.2 prints them -----------------------------------------------------------

REFUSED = "ssh: connect to host 10.0.0.5 port 22: Connection refused\r\n"
NOT_RESOLVED = "ssh: Could not resolve hostname nonexistent.invalid: Name or service not known\r\n"
NO_DNS = "ssh: Could not resolve hostname gpu.lan: Temporary failure in name resolution\r\n"
CONNECT_TIMED_OUT = "ssh: connect to host 10.0.0.5 port 22: Connection timed out\r\n"
BANNER_TIMED_OUT = "Connection timed out during banner exchange\r\nConnection to 10.0.0.5 port 22 timed out\r\n"
NO_ROUTE = "ssh: connect to host 10.0.0.5 port 22: No route to host\r\n"
UNREACHABLE = "ssh: connect to host 10.0.0.5 port 22: Network is unreachable\r\n"
DENIED = "rbee-h1@10.0.0.5: Permission denied (publickey).\r\n"
DENIED_MISSING_KEY = (
    "Warning: Identity file /home/me/.ssh/rbee not accessible: No such file or directory.\n"
    "rbee-h1@10.0.0.5: Permission denied (publickey,password).\r\n"
)
TOO_MANY = "Received disconnect from 10.0.0.5 port 22:2: Too many authentication failures\r\n"
HOST_KEY_FAILED = "Host key verification failed.\r\n"
NO_HOST_KEY = (
    "No ED25519 host key is known for 10.0.0.5 and you have requested strict checking.\r\n"
    "Host key verification failed.\r\n"
)
HOST_KEY_CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:QDrUWpq9P/6yLO1F/H1b5qsvMwjOGaD1pDvfCy4Cd/g.
Please contact your system administrator.
Add correct host key in /home/me/.ssh/known_hosts to get rid of this message.
Offending ED25519 key in /home/me/.ssh/known_hosts:3
  remove with:
  ssh-keygen -f "/home/me/.ssh/known_hosts" -R "[10.0.0.5]:2222"
Host key for [10.0.0.5]:2222 has changed and you have requested strict checking.
Host key verification failed.
"""
KEX_CLOSED = (
    "kex_exchange_identification: Connection closed by remote host\r\nConnection closed by 10.0.0.5 port 22\r\n"
)
KEX_RESET = (
    "kex_exchange_identification: read: Connection reset by peer\r\nConnection reset by 10.0.0.5 port 22\r\n"
)
BAD_OPTION = "command-line: line 0: Bad configuration option: hiveprot\r\n"


@pytest.mark.parametrize(
    ("host", "stderr", "words"),
    [
        (H1, REFUSED, ["h1 (rbee-h1@10.0.0.5:22): connection refused at 10.0.0.5:22", "sshd running"]),
        (HostConfig("n", hostname="nonexistent.invalid"), NOT_RESOLVED,
         ["n (nonexistent.invalid:22): cannot resolve the host name 'nonexistent.invalid'"]),
        (HostConfig("gpu.lan", source="~/.ssh/config"), NO_DNS,
         ["gpu.lan (gpu.lan): cannot resolve the host name 'gpu.lan' (Temporary failure"]),
        (H1, CONNECT_TIMED_OUT, ["h1 (rbee-h1@10.0.0.5:22): host unreachable at 10.0.0.5:22 (connection timed out)"]),
        (H1, BANNER_TIMED_OUT, ["host unreachable at 10.0.0.5:22 (timed out)"]),
        (H1, NO_ROUTE, ["host unreachable at 10.0.0.5:22 (no route to host)"]),
        (H1, UNREACHABLE, ["host unreachable at 10.0.0.5:22 (network is unreachable)"]),
        (H1, DENIED, ["h1 (rbee-h1@10.0.0.5:22): permission denied", "your ssh-agent and default keys",
                      "`ssh-copy-id rbee-h1@10.0.0.5`"]),
        (H1_KEY, DENIED_MISSING_KEY, ["h1 (rbee-h1@10.0.0.5:2222): permission denied",
                                      "the key /home/me/.ssh/rbee (/home/me/.ssh/rbee does not exist",
                                      "`ssh-copy-id -i /home/me/.ssh/rbee -p 2222 rbee-h1@10.0.0.5`"]),
        (HostConfig("pc", source="~/.ssh/config"), "me@pc.lan: Permission denied (publickey).\n",
         ["pc (me@pc): permission denied", "`ssh-copy-id me@pc`"]),
        (H1, TOO_MANY, ["permission denied"]),
        (H1, HOST_KEY_FAILED, ["h1 (rbee-h1@10.0.0.5:22): its host key is not known (or has changed)",
                               "Run `ssh rbee-h1@10.0.0.5` once"]),
        (H1_KEY, NO_HOST_KEY, ["host key is not known", "`ssh -p 2222 -i /home/me/.ssh/rbee rbee-h1@10.0.0.5`"]),
        (H1_KEY, HOST_KEY_CHANGED, ["h1 (rbee-h1@10.0.0.5:2222): the host key has CHANGED",
                                    "`ssh-keygen -R '[10.0.0.5]:2222'`", "`ssh -p 2222 -i /home/me/.ssh/rbee"]),
        (H1, KEX_CLOSED, ["h1 (rbee-h1@10.0.0.5:22): the server closed the connection before SSH could start"]),
        (H1, KEX_RESET, ["closed the connection before SSH could start"]),
        (H1, "Connection to 10.0.0.5 closed by remote host.\r\n", ["closed by the remote host"]),
        (H1, BAD_OPTION, ["ssh does not know the option 'hiveprot'"]),
    ],
)
def test_explain_openssh_messages(host: HostConfig, stderr: str, words: list[str]) -> None:
    message = explain(host, stderr)
    assert message is not None
    assert message.startswith(f"{host.alias} (")
    for part in words:
        assert part in message


@pytest.mark.parametrize("stderr", ["", "cat: /root/x: Permission denied\n", "something else went wrong\n"])
def test_explain_leaves_other_output_alone(stderr: str) -> None:
    assert explain(H1, stderr) is None


# -- the real ssh, against nothing ----------------------------------------------------------------------------


async def test_a_closed_port_is_an_ssh_error_naming_the_host(control: Path) -> None:
    port = free_port()
    host = HostConfig("closed", hostname="127.0.0.1", port=port)
    with pytest.raises(SSHError) as caught:
        await SSH(host).run("true", check=False)
    assert not isinstance(caught.value, RemoteCommandFailed)
    assert str(caught.value) == (
        f"closed (127.0.0.1:{port}): connection refused at 127.0.0.1:{port}. Is sshd running there, and is Port right?"
    )
    lines: list[str] = []
    with pytest.raises(SSHError, match=f"^closed \\(127.0.0.1:{port}\\): connection refused"):
        await SSH(host).stream("true", lines.append)
    assert lines == [f"ssh: connect to host 127.0.0.1 port {port}: Connection refused"]


async def test_an_unresolvable_name_is_an_ssh_error(control: Path) -> None:
    with pytest.raises(SSHError, match=r"^nowhere \(nonexistent\.invalid:22\): cannot resolve the host name"):
        await SSH(HostConfig("nowhere", hostname="nonexistent.invalid")).run("true", timeout=30)


async def test_no_ssh_client_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SSHError, match="no `ssh` client found"):
        await SSH(H1).run("true")


# -- a stand-in ssh that runs the command here ----------------------------------------------------------------

FAKE_SSH = """#!/bin/sh
# Stands in for ssh: logs its argv, skips to "--", drops the destination, runs the command with sh.
# It never runs a shared master, so `-O check` says so, as ssh does.
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
case " $* " in *" -O check "*) echo "Control socket connect: No such file or directory" >&2; exit 255;; esac
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift 2
exec /bin/sh -c "${1:-true}"
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: Path) -> Path:
    """Put the stand-in first on PATH; returns the log of its command lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    return log


async def test_run_collects_output_and_checks_the_status(fake_ssh: Path) -> None:
    ssh = SSH(H1)
    assert await ssh.run("echo out; echo err >&2") == Result(0, "out\n", "err\n")
    assert (await ssh.run("exit 3", check=False)).rc == 3
    assert (await ssh.run("cat", input=b"piped\n")).stdout == "piped\n"
    with pytest.raises(RemoteCommandFailed) as caught:
        await ssh.run("echo partial; echo 'it broke' >&2; exit 4")
    failed = caught.value
    assert (failed.rc, failed.stdout, failed.stderr) == (4, "partial\n", "it broke\n")
    assert str(failed) == "h1 (rbee-h1@10.0.0.5:22): `echo partial; echo 'it broke' >&2; exit 4` exited with " \
                          "status 4:\nit broke"
    await ssh.close()
    logged = fake_ssh.read_text().splitlines()
    assert logged[-2].startswith("-o BatchMode=yes") and "-O exit -- 10.0.0.5" in logged[-2]
    assert "-O check -- 10.0.0.5" in logged[-1]  # close() returns once the master no longer answers


async def test_a_remote_255_that_ssh_did_not_explain_is_a_failed_command(fake_ssh: Path) -> None:
    with pytest.raises(RemoteCommandFailed) as caught:
        await SSH(H1).run("echo odd >&2; exit 255")
    assert caught.value.rc == 255
    with pytest.raises(SSHError, match=r"connection refused at 10\.0\.0\.5:22"):
        await SSH(H1).run(f"printf '{REFUSED}' >&2; exit 255", check=False)


async def test_our_timeout_is_an_ssh_error(fake_ssh: Path) -> None:
    started = time.monotonic()  # `exec`: killing the stand-in must close the pipes, as killing ssh does
    with pytest.raises(SSHError, match=r"^h1 \(rbee-h1@10.0.0.5:22\): did not answer within 0.3 s"):
        await SSH(H1).run("exec sleep 10", timeout=0.3)
    with pytest.raises(SSHError, match=r"did not answer within 0\.3 s"):
        await SSH(H1).stream("echo first; exec sleep 10", lambda line: None, timeout=0.3)
    assert time.monotonic() - started < 5


async def test_stream_hands_over_lines_as_they_come(fake_ssh: Path) -> None:
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    rc = await SSH(H1).stream(
        "echo one; echo two >&2; sleep 0.5; printf 'three\\r\\nno newline'; exit 7",
        lambda line: seen.append((line, time.monotonic() - started)),
    )
    assert rc == 7
    assert sorted(line for line, _ in seen) == ["no newline", "one", "three", "two"]
    at = dict(seen)
    assert at["three"] - max(at["one"], at["two"]) > 0.3  # handed over while the command was still sleeping


async def test_stream_passes_on_errors_from_on_line(fake_ssh: Path) -> None:
    def boom(line: str) -> None:
        raise ValueError(line)

    started = time.monotonic()
    with pytest.raises(ValueError, match="first"):
        await SSH(H1).stream("echo first; exec sleep 10", boom, timeout=5)
    assert time.monotonic() - started < 4


async def test_put_and_put_text_write_atomically_with_the_mode(fake_ssh: Path, tmp_path: Path) -> None:
    ssh = SSH(H1)
    local = tmp_path / "engine.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    target = tmp_path / "remote dir" / "it's here" / "engine.bin"
    await ssh.put(local, str(target), mode="0755")
    assert target.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755

    await ssh.put_text("token: s3cret\n", str(target.with_name("token")))
    assert target.with_name("token").read_text() == "token: s3cret\n"
    assert stat.S_IMODE(target.with_name("token").stat().st_mode) == 0o600
    await ssh.put_text("replaced\n", str(target.with_name("token")))
    assert target.with_name("token").read_text() == "replaced\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["engine.bin", "token"]  # no temporary files left


async def test_put_text_to_the_remote_home(fake_ssh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    await SSH(H1).put_text("x", "~/.config/rbee/hive.toml")
    assert (tmp_path / ".config" / "rbee" / "hive.toml").read_text() == "x"


async def test_put_failures_name_the_path(fake_ssh: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RemoteCommandFailed, match=r"^h1 \(rbee-h1@10.0.0.5:22\): could not write .*file/x: "):
        await SSH(H1).put_text("x", str(tmp_path / "file" / "x"))
    with pytest.raises(ValueError, match="mode"):
        await SSH(H1).put_text("x", str(tmp_path / "y"), mode="u+x; reboot")
    with pytest.raises(ValueError, match="name a file"):
        await SSH(H1).put_text("x", str(tmp_path) + "/")


# -- a real sshd of our own, where one is installed -----------------------------------------------------------


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_name(path.name + ".pub")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


@pytest.fixture
def sshd(tmp_path: Path, control: Path) -> Iterator[HostConfig]:
    """A private sshd on a free port that accepts one generated key; the HostConfig to reach it."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd_bin, os.X_OK) or shutil.which("ssh-keygen") is None:
        pytest.skip("no sshd here")
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "client", "other"):
        _keygen(keys / name)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {(keys / 'host.pub').read_text()}")
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nAuthorizedKeysFile {keys}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        f"PidFile {keys}/sshd.pid\n"
    )
    proc = subprocess.Popen([sshd_bin, "-D", "-f", str(config), "-E", str(keys / "sshd.log")])
    try:
        if not _wait_for_port(port, proc):
            log = (keys / "sshd.log").read_text() if (keys / "sshd.log").exists() else ""
            pytest.skip(f"sshd would not start here: {log.strip()[-300:]}")
        yield HostConfig("own", hostname="127.0.0.1", user=getpass.getuser(), port=port,
                         identity_file=str(keys / "client"),
                         ssh_options=(("UserKnownHostsFile", str(keys / "known_hosts")),))
    finally:
        proc.terminate()
        proc.wait(10)


async def test_real_sshd_runs_streams_puts_and_shares_one_connection(sshd: HostConfig, control: Path,
                                                                     tmp_path: Path) -> None:
    async with SSH(sshd) as ssh:
        assert (await ssh.run("echo hello; echo there >&2")).stdout == "hello\n"
        assert list(control.iterdir()), "no ControlMaster socket"
        started = time.monotonic()
        for _ in range(3):
            assert (await ssh.run("true")).rc == 0
        assert time.monotonic() - started < 3
        lines: list[str] = []
        assert await ssh.stream("echo a; echo b >&2; exit 3", lines.append) == 3
        assert sorted(lines) == ["a", "b"]
        await ssh.put_text("secret\n", str(tmp_path / "out" / "secret.txt"))
        assert (tmp_path / "out" / "secret.txt").read_text() == "secret\n"
    assert not list(control.iterdir()), "close() left the master running"


async def test_real_sshd_refusing_a_key_and_a_changed_host_key(sshd: HostConfig, tmp_path: Path) -> None:
    stranger = HostConfig("own", hostname="127.0.0.1", user="nobody", port=sshd.port,
                          identity_file=sshd.identity_file, ssh_options=sshd.ssh_options)
    with pytest.raises(SSHError, match=rf"^own \(nobody@127.0.0.1:{sshd.port}\): permission denied"):
        await SSH(stranger).run("true")
    assert sshd.identity_file is not None
    other_host_key = Path(sshd.identity_file).with_name("other.pub")
    known = tmp_path / "changed_known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other_host_key.read_text()}")
    changed = HostConfig("own", hostname="127.0.0.1", user=sshd.user, port=sshd.port,
                         identity_file=sshd.identity_file, ssh_options=(("UserKnownHostsFile", str(known)),))
    with pytest.raises(SSHError, match="the host key has CHANGED"):
        await SSH(changed).run("true")
